//! The id → session directory: entries in a slab of fixed-size segments,
//! found through a hash table of 4-byte slot numbers, kept in creation
//! order by links between slots, grown without a stall.
//!
//! Why this shape: an idle session is a directory entry of about 200
//! bytes, so the per-entry cost of a `HashMap<String, Box<_>>` (a 32-byte
//! bucket, a key allocation, a box) and a `BTreeMap` for the order would
//! be most of it. Worse, each of those small allocations was made while
//! the session's history was, beside it in the heap: once the history left
//! RAM, they kept its pages from going back to the OS (20 000 idle
//! sessions held 5.4 KB of RSS each, about a page). Here the table holds
//! only a `u32` per bucket; an entry, its id (inline when short) and its
//! order links live in a slab segment of [`SEGMENT`] entries, one
//! allocation, so RAM follows the entries.
//!
//! Growing never rehashes in place: when the live table is full it
//! becomes the *old* table, a table twice its size becomes live, and
//! entries move across as Redis' `dict.c` moves them: a couple per insert
//! (so the live table cannot fill before the old one is empty), and the
//! rest from the loop's maintenance step under a time budget
//! ([`Directory::step`]), never a fixed share per insert. Moves walk the
//! slab in order and take the stored hash, so each is a sequential read
//! and one probe, not a cache miss on the id.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// Slots per slab segment: adding a segment never copies the others.
const SEGMENT: usize = 1024;

/// Entries moved per insert while growing: with the live table twice the
/// old one's size, two per insert empty the old table before the live one
/// can fill.
const MOVES_PER_INSERT: usize = 2;

/// Moves between two looks at the clock in [`Directory::step`].
const MOVES_PER_CLOCK_READ: usize = 256;

/// "No slot" in the order links.
const NIL: u32 = u32::MAX;

/// Ids up to this long are kept inside the entry (this server's ids are 32
/// bytes, UUIDs 36); longer ones (up to 128) in an allocation of their own.
const INLINE_ID: usize = 40;

#[derive(Debug)]
enum Id {
    Inline(u8, [u8; INLINE_ID]),
    Heap(Box<str>),
}

impl Id {
    fn new(id: &str) -> Id {
        match id.len() {
            n if n <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..n].copy_from_slice(id.as_bytes());
                Id::Inline(n as u8, bytes)
            }
            _ => Id::Heap(id.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole: always UTF-8.
            Id::Inline(n, bytes) => std::str::from_utf8(&bytes[..*n as usize]).unwrap_or(""),
            Id::Heap(id) => id,
        }
    }

    fn is(&self, id: &str) -> bool {
        match self {
            Id::Inline(n, bytes) => &bytes[..*n as usize] == id.as_bytes(),
            Id::Heap(own) => &**own == id,
        }
    }
}

#[derive(Debug)]
struct Slot<V> {
    hash: u64,
    id: Id,
    /// The entries made just before and after this one ([`NIL`]: none).
    prev: u32,
    next: u32,
    value: V,
}

#[derive(Debug)]
pub struct Directory<V> {
    hasher: RandomState,
    live: HashTable<u32>,
    /// The table being emptied into `live`, and the next slot to move.
    old: Option<(HashTable<u32>, usize)>,
    segments: Vec<Box<[Option<Slot<V>>]>>,
    /// Slots freed by removals, reused first.
    free: Vec<u32>,
    /// Slots ever handed out (the slab's high-water mark).
    used: usize,
    len: usize,
    /// The oldest and newest entries ([`NIL`]: empty).
    first: u32,
    last: u32,
}

impl<V> Default for Directory<V> {
    fn default() -> Self {
        Directory {
            hasher: RandomState::new(),
            live: HashTable::new(),
            old: None,
            segments: Vec::new(),
            free: Vec::new(),
            used: 0,
            len: 0,
            first: NIL,
            last: NIL,
        }
    }
}

impl<V> Directory<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether entries are still moving to the live table.
    #[cfg(test)]
    pub fn is_growing(&self) -> bool {
        self.old.is_some()
    }

    fn slot(&self, i: u32) -> Option<&Slot<V>> {
        let i = i as usize;
        self.segments.get(i / SEGMENT)?.get(i % SEGMENT)?.as_ref()
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot<V>> {
        let i = i as usize;
        self.segments
            .get_mut(i / SEGMENT)?
            .get_mut(i % SEGMENT)?
            .as_mut()
    }

    /// The slot holding `id`, if any.
    fn find(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let matches = |&i: &u32| self.slot(i).is_some_and(|s| s.id.is(id));
        if let Some(&i) = self.live.find(hash, matches) {
            return Some(i);
        }
        let (old, _) = self.old.as_ref()?;
        old.find(hash, matches).copied()
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        let i = self.find(id)?;
        self.slot(i).map(|s| &s.value)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        let i = self.find(id)?;
        self.slot_mut(i).map(|s| &mut s.value)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// The entry in slot `i` and its id (for walks in another order,
    /// such as creation order).
    pub fn at(&self, i: u32) -> Option<(&str, &V)> {
        self.slot(i).map(|s| (s.id.as_str(), &s.value))
    }

    pub fn at_mut(&mut self, i: u32) -> Option<(&str, &mut V)> {
        self.slot_mut(i).map(|s| (s.id.as_str(), &mut s.value))
    }

    /// The oldest entry's slot.
    pub fn first(&self) -> Option<u32> {
        (self.first != NIL).then_some(self.first)
    }

    /// The slot of the entry made after the one in slot `i`.
    pub fn next_of(&self, i: u32) -> Option<u32> {
        self.slot(i).map(|s| s.next).filter(|&n| n != NIL)
    }

    /// Slots in creation order from `from` (None: from the oldest).
    pub fn order_from(&self, from: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        let start = from.or(self.first()).filter(|&i| self.slot(i).is_some());
        std::iter::successors(start, |&i| self.next_of(i))
    }

    /// The slot of `id`, if present.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.find(id)
    }

    /// Inserts a new entry (`id` must not be present); returns its slot.
    /// When the live table is full, growing starts instead of a rehash in
    /// place.
    pub fn insert(&mut self, id: &str, value: V) -> u32 {
        if self.old.is_none() && self.live.len() == self.live.capacity() {
            let bigger = HashTable::with_capacity((self.live.capacity() * 2).max(16));
            let full = std::mem::replace(&mut self.live, bigger);
            if !full.is_empty() {
                self.old = Some((full, 0));
            }
        }
        let hash = self.hasher.hash_one(id);
        let slot = self.take_slot();
        let i = slot as usize;
        self.segments[i / SEGMENT][i % SEGMENT] = Some(Slot {
            hash,
            id: Id::new(id),
            prev: self.last,
            next: NIL,
            value,
        });
        match self.last {
            NIL => self.first = slot,
            last => {
                if let Some(s) = self.slot_mut(last) {
                    s.next = slot;
                }
            }
        }
        self.last = slot;
        let segments = &self.segments;
        self.live
            .insert_unique(hash, slot, |&s| hash_of(segments, s));
        self.len += 1;
        self.moves(MOVES_PER_INSERT);
        slot
    }

    fn take_slot(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            return i;
        }
        if self.used == self.segments.len() * SEGMENT {
            self.segments
                .push((0..SEGMENT).map(|_| None).collect::<Vec<_>>().into());
        }
        self.used += 1;
        (self.used - 1) as u32
    }

    /// Removes an entry; its slot is reused by a later insert.
    pub fn remove(&mut self, id: &str) -> Option<V> {
        let hash = self.hasher.hash_one(id);
        let segments = &self.segments;
        let matches = |&i: &u32| {
            let i = i as usize;
            segments[i / SEGMENT][i % SEGMENT]
                .as_ref()
                .is_some_and(|s| s.id.is(id))
        };
        let slot = match self.live.find_entry(hash, matches) {
            Ok(entry) => entry.remove().0,
            Err(_) => {
                let (old, _) = self.old.as_mut()?;
                old.find_entry(hash, matches).ok()?.remove().0
            }
        };
        let i = slot as usize;
        let removed = self.segments[i / SEGMENT][i % SEGMENT].take()?;
        match removed.prev {
            NIL => self.first = removed.next,
            p => {
                if let Some(s) = self.slot_mut(p) {
                    s.next = removed.next;
                }
            }
        }
        match removed.next {
            NIL => self.last = removed.prev,
            n => {
                if let Some(s) = self.slot_mut(n) {
                    s.prev = removed.prev;
                }
            }
        }
        self.free.push(slot);
        self.len -= 1;
        if self.len == 0 {
            // Everything went: give the slab back.
            self.segments = Vec::new();
            self.free = Vec::new();
            self.used = 0;
        }
        Some(removed.value)
    }

    /// Moves up to `n` entries from the old table; frees it once empty.
    fn moves(&mut self, n: usize) -> bool {
        let Some((old, cursor)) = self.old.as_mut() else {
            return false;
        };
        let mut moved = 0;
        while moved < n && !old.is_empty() && *cursor < self.used {
            let i = *cursor as u32;
            *cursor += 1;
            let Some(hash) = slot_hash(&self.segments, i) else {
                continue;
            };
            if let Ok(entry) = old.find_entry(hash, |&s| s == i) {
                entry.remove();
                let segments = &self.segments;
                self.live.insert_unique(hash, i, |&s| hash_of(segments, s));
                moved += 1;
            }
        }
        let done = old.is_empty() || *cursor >= self.used;
        if done {
            // Whatever the walk did not meet (none, as every entry has a
            // slot below `used`) moves now.
            if let Some((rest, _)) = self.old.take() {
                for i in rest {
                    let segments = &self.segments;
                    let hash = hash_of(segments, i);
                    self.live.insert_unique(hash, i, |&s| hash_of(segments, s));
                }
            }
        }
        !done
    }

    /// The loop's share of growing: moves entries until `budget` of time
    /// is spent or the old table is empty. Returns whether growing is
    /// still under way.
    pub fn step(&mut self, budget: Duration) -> bool {
        let started = Instant::now();
        while self.moves(MOVES_PER_CLOCK_READ) {
            if started.elapsed() >= budget {
                return true;
            }
        }
        false
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.segments
            .iter()
            .flat_map(|s| s.iter())
            .flatten()
            .map(|s| (s.id.as_str(), &s.value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.segments
            .iter_mut()
            .flat_map(|s| s.iter_mut())
            .flatten()
            .map(|s| &mut s.value)
    }
}

fn slot_hash<V>(segments: &[Box<[Option<Slot<V>>]>], i: u32) -> Option<u64> {
    let i = i as usize;
    segments
        .get(i / SEGMENT)?
        .get(i % SEGMENT)?
        .as_ref()
        .map(|s| s.hash)
}

/// A slot's stored hash (the table's rehash callback; it never runs, as
/// neither table is inserted into past its capacity).
fn hash_of<V>(segments: &[Box<[Option<Slot<V>>]>], i: u32) -> u64 {
    slot_hash(segments, i).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `k{n}` for n from `first` on until the table starts growing;
    /// returns the next n.
    fn fill_until_growing(map: &mut Directory<u64>, first: u64) -> u64 {
        let mut i = first;
        while !map.is_growing() {
            map.insert(&format!("k{i}"), i);
            i += 1;
        }
        i
    }

    #[test]
    fn grows_a_step_at_a_time_and_finds_everything_meanwhile() {
        let mut map = Directory::default();
        let mut grew = false;
        for i in 0..10_000u64 {
            map.insert(&format!("s{i}"), i);
            if map.is_growing() {
                grew = true;
                // Mid-growth, old and new entries are both found.
                assert_eq!(map.get("s0"), Some(&0));
                assert_eq!(map.get(&format!("s{i}")), Some(&i));
            }
            assert_eq!(map.len(), i as usize + 1);
        }
        assert!(grew, "10 000 inserts must have grown the table");
        while map.step(Duration::from_secs(1)) {}
        assert!(!map.is_growing());
        for i in 0..10_000u64 {
            assert_eq!(map.get(&format!("s{i}")), Some(&i));
        }
        assert_eq!(map.iter().count(), 10_000);
    }

    #[test]
    fn inserts_alone_finish_growing_before_the_live_table_fills() {
        let mut map = Directory::default();
        let mut i = fill_until_growing(&mut map, 0);
        let live_capacity = map.live.capacity();
        // No `step` from the loop at all: inserts move enough themselves.
        while map.is_growing() {
            map.insert(&format!("k{i}"), i);
            i += 1;
            assert_eq!(map.live.capacity(), live_capacity, "rehashed in place");
        }
        assert_eq!(map.len(), i as usize);
    }

    #[test]
    fn removes_and_mutates_in_either_table_and_reuses_slots() {
        let mut map = Directory::default();
        let i = fill_until_growing(&mut map, 0);
        let (old, _) = map.old.as_ref().unwrap();
        let in_old = *old.iter().next().expect("an entry still in the old table");
        let key = map.at(in_old).unwrap().0.to_owned();
        *map.get_mut(&key).unwrap() += 1000;
        assert_eq!(
            map.get(&key).map(|v| v % 1000),
            map.at(in_old).map(|(_, v)| v % 1000)
        );
        assert!(map.remove(&key).is_some());
        assert_eq!(map.get(&key), None);
        assert_eq!(map.len(), i as usize - 1);
        // The freed slot is the next one used.
        assert_eq!(map.insert("again", 7), in_old);
        assert_eq!(map.get("again"), Some(&7));
        while map.step(Duration::from_secs(1)) {}
        assert_eq!(map.len(), i as usize);
        for n in 0..i {
            let k = format!("k{n}");
            assert_eq!(map.get(&k).is_some(), k != key, "{k}");
        }
    }

    #[test]
    fn a_step_stops_at_its_time_budget() {
        let mut map = Directory::default();
        fill_until_growing(&mut map, 0);
        // A zero budget still moves one batch, and no more.
        let before = map.live.len();
        map.step(Duration::ZERO);
        assert!(map.live.len() <= before + MOVES_PER_CLOCK_READ);
    }

    #[test]
    fn keeps_creation_order_through_removals_and_reused_slots() {
        let mut map = Directory::default();
        for i in 0..5u64 {
            map.insert(&format!("k{i}"), i);
        }
        let order = |map: &Directory<u64>| -> Vec<u64> {
            map.order_from(None)
                .map(|s| *map.at(s).unwrap().1)
                .collect()
        };
        map.remove("k0");
        map.remove("k2");
        map.remove("k4");
        assert_eq!(order(&map), [1, 3]);
        // A reused slot goes last, whatever its number.
        let slot = map.insert("k5", 5);
        assert_eq!(order(&map), [1, 3, 5]);
        assert_eq!(map.next_of(slot), None);
        let k3 = map.slot_of("k3").unwrap();
        assert_eq!(map.order_from(Some(k3)).count(), 2);
        // Long ids live outside the entry, short ones in it; both are found.
        let long = "x".repeat(128);
        map.insert(&long, 6);
        assert_eq!(map.get(&long), Some(&6));
        assert_eq!(map.at(map.slot_of(&long).unwrap()).unwrap().0, long);
        assert_eq!(order(&map), [1, 3, 5, 6]);
    }

    #[test]
    fn emptied_gives_its_slab_back() {
        let mut map = Directory::default();
        for i in 0..3000u64 {
            map.insert(&format!("k{i}"), i);
        }
        for i in 0..3000u64 {
            map.remove(&format!("k{i}"));
        }
        assert!(map.is_empty());
        assert!(map.segments.is_empty() && map.free.is_empty());
        map.insert("x", 1);
        assert_eq!(map.get("x"), Some(&1));
    }
}
