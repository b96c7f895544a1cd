//! The id → session map, grown without a stall.
//!
//! A `HashMap` doubles its table in one go when it fills: every entry is
//! rehashed and moved at once, which at a million sessions stops the loop
//! for a second or more. This map does what Redis' `dict.c` does instead:
//! when the live table is full it becomes the *old* table, a table twice
//! its size becomes live, and entries move across a few at a time — on
//! every insert, and from the loop's maintenance step — while lookups
//! look in both. Sessions are boxed, so a move is a 32-byte copy
//! and freeing the emptied old table is cheap.
//!
//! The work is bounded per loop iteration, not per insert: an insert moves
//! only [`STEP`] entries (enough that the live table, twice the old one's
//! size, cannot fill before the old one is empty), and the loop's
//! maintenance step moves the rest under a time budget (Redis'
//! `dictRehashMilliseconds`). With 64 moves per insert, 8 clients
//! pipelining creations made 256 inserts × 64 cache-cold moves in one
//! iteration: 28–58 ms.
//!
//! The moving order is the caller's creation order (the table's
//! `ordinal → id` index), followed with a cursor, so each step costs
//! `O(budget · log n)` and never rescans what has moved.

use std::collections::{BTreeMap, HashMap};

/// Entries moved to the live table per insert while growing: the live
/// table has twice the old one's capacity, so two per insert empty the old
/// one before the live one could fill (and rehash in place, all at once).
pub const STEP: usize = 2;

/// Moves between two looks at the clock in [`GrowingMap::step_for`].
const MOVES_PER_CLOCK_READ: usize = 128;

#[derive(Debug)]
pub struct GrowingMap<V> {
    live: HashMap<String, Box<V>>,
    /// The table being emptied into `live`, and the next ordinal to move.
    old: Option<(HashMap<String, Box<V>>, u64)>,
}

impl<V> Default for GrowingMap<V> {
    fn default() -> Self {
        GrowingMap {
            live: HashMap::new(),
            old: None,
        }
    }
}

impl<V> GrowingMap<V> {
    pub fn len(&self) -> usize {
        self.live.len() + self.old.as_ref().map_or(0, |(o, _)| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether entries are still moving to the live table.
    #[cfg(test)]
    pub fn is_growing(&self) -> bool {
        self.old.is_some()
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        match self.live.get(id) {
            Some(v) => Some(v),
            None => self.old.as_ref()?.0.get(id).map(|v| &**v),
        }
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        // An id is in one table or the other; when not growing this is one
        // hash and one probe (this runs for every event broadcast).
        if let Some((old, _)) = self.old.as_mut() {
            if let Some(v) = old.get_mut(id) {
                return Some(&mut **v);
            }
        }
        self.live.get_mut(id).map(|v| &mut **v)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Inserts a new entry (`id` must not be present). When the live table
    /// is full, growing starts instead of a rehash in place.
    pub fn insert(&mut self, id: String, value: V, order: &BTreeMap<u64, String>) {
        if self.old.is_none() && self.live.len() == self.live.capacity() && !self.live.is_empty() {
            let bigger = HashMap::with_capacity(self.live.capacity() * 2);
            let full = std::mem::replace(&mut self.live, bigger);
            let first = order.keys().next().copied().unwrap_or(0);
            self.old = Some((full, first));
        }
        self.live.insert(id, Box::new(value));
        self.step(order, STEP);
    }

    /// Removes an entry. Unlike an insert it moves none along: the sweep
    /// removes 256 per iteration, and 64 moves each made a 3 ms iteration
    /// while growing; [`step`](Self::step) from the loop keeps growth
    /// going.
    pub fn remove(&mut self, id: &str) -> Option<V> {
        let removed = match self.live.remove(id) {
            Some(v) => Some(v),
            None => self.old.as_mut().and_then(|(o, _)| o.remove(id)),
        };
        removed.map(|v| *v)
    }

    /// Moves up to `budget` entries from the old table, in `order` from
    /// the cursor; frees the old table once it is empty. Returns whether
    /// growing is still under way.
    pub fn step(&mut self, order: &BTreeMap<u64, String>, budget: usize) -> bool {
        let Some((old, cursor)) = self.old.as_mut() else {
            return false;
        };
        let (mut moved, mut visited) = (0, 0);
        let mut next = *cursor;
        for (&ordinal, id) in order.range(*cursor..) {
            // Past the last old entry the order lists only live ones: a
            // step that went on would walk all of them (tens of ms at the
            // end of each growth, before this stop).
            if old.is_empty() {
                break;
            }
            next = ordinal + 1;
            visited += 1;
            if let Some((k, v)) = old.remove_entry(id.as_str()) {
                self.live.insert(k, v);
                moved += 1;
            }
            if moved == budget || visited == budget.saturating_mul(4) {
                break;
            }
        }
        *cursor = next;
        // Everything in `order` has been visited: what is left (entries
        // the order does not list, which the table never makes) moves now.
        let done = old.is_empty() || order.range(next..).next().is_none();
        if done {
            if let Some((rest, _)) = self.old.take() {
                self.live.extend(rest);
            }
        }
        !done
    }

    /// The loop's share of growing: moves entries until `budget` of time
    /// is spent. Returns whether growing is still under way.
    pub fn step_for(&mut self, order: &BTreeMap<u64, String>, budget: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        while self.step(order, MOVES_PER_CLOCK_READ) {
            if started.elapsed() >= budget {
                return true;
            }
        }
        false
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        let old = self.old.iter().flat_map(|(o, _)| o.iter());
        self.live.iter().chain(old).map(|(k, v)| (k, &**v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `k{n}` for n from `first` on until the table starts growing;
    /// returns the next n.
    fn fill_until_growing(
        map: &mut GrowingMap<u64>,
        order: &mut BTreeMap<u64, String>,
        first: u64,
    ) -> u64 {
        let mut i = first;
        while !map.is_growing() {
            order.insert(i, format!("k{i}"));
            map.insert(format!("k{i}"), i, order);
            i += 1;
        }
        i
    }

    #[test]
    fn grows_a_step_at_a_time_and_finds_everything_meanwhile() {
        let mut order = BTreeMap::new();
        let mut map = GrowingMap::default();
        let mut grew = false;
        for i in 0..10_000u64 {
            let id = format!("s{i}");
            order.insert(i, id.clone());
            map.insert(id, i, &order);
            if map.is_growing() {
                grew = true;
                // Mid-growth, old and new entries are both found.
                assert_eq!(map.get("s0"), Some(&0));
                assert_eq!(map.get(&format!("s{i}")), Some(&i));
            }
            assert_eq!(map.len(), i as usize + 1);
        }
        assert!(grew, "10 000 inserts must have grown the table");
        while map.step(&order, STEP) {}
        assert!(!map.is_growing());
        for i in 0..10_000u64 {
            assert_eq!(map.get(&format!("s{i}")), Some(&i));
        }
        assert_eq!(map.iter().count(), 10_000);
    }

    #[test]
    fn removes_and_mutates_in_either_table() {
        let mut order = BTreeMap::new();
        let mut map = GrowingMap::default();
        // Fill until growing starts, so some entries sit in the old table.
        let i = fill_until_growing(&mut map, &mut order, 0);
        let in_old = (0..i)
            .rev()
            .find(|n| !map.live.contains_key(&format!("k{n}")));
        let in_old = in_old.expect("an entry still in the old table");
        *map.get_mut(&format!("k{in_old}")).unwrap() += 1000;
        assert_eq!(map.get(&format!("k{in_old}")), Some(&(in_old + 1000)));
        let key = format!("k{in_old}");
        order.remove(&in_old);
        assert_eq!(map.remove(&key), Some(in_old + 1000));
        assert_eq!(map.get(&key), None);
        assert_eq!(map.len(), i as usize - 1);
        while map.step(&order, 1) {}
        assert_eq!(map.len(), i as usize - 1);
    }

    #[test]
    fn a_step_looks_at_no_more_than_four_times_its_budget() {
        let mut order = BTreeMap::new();
        // Ids the order lists that are in neither table (a step skips
        // them, but must not walk all of them at once).
        for i in 0..1000u64 {
            order.insert(i, format!("gone{i}"));
        }
        let mut map = GrowingMap::default();
        let i = fill_until_growing(&mut map, &mut order, 1000);
        // The insert that started growing stepped once from ordinal 0.
        let cursor = |m: &GrowingMap<u64>| m.old.as_ref().map_or(u64::MAX, |(_, c)| *c);
        assert!(cursor(&map) <= 4 * STEP as u64, "{}", cursor(&map));
        let before = cursor(&map);
        map.step(&order, 3);
        assert!(
            cursor(&map) <= before + 12,
            "{} -> {}",
            before,
            cursor(&map)
        );
        // And once the old table is empty, growing ends without walking
        // the live entries after it.
        while map.step(&order, 1_000_000) {}
        assert!(!map.is_growing());
        assert_eq!(map.len(), (i - 1000) as usize);
    }

    #[test]
    fn inserts_alone_finish_growing_before_the_live_table_fills() {
        let mut order = BTreeMap::new();
        let mut map = GrowingMap::default();
        let mut i = fill_until_growing(&mut map, &mut order, 0);
        let capacity = map.live.capacity();
        // No step from the loop at all: the inserts' own moves suffice.
        while map.is_growing() {
            order.insert(i, format!("k{i}"));
            map.insert(format!("k{i}"), i, &order);
            i += 1;
            assert_eq!(map.live.capacity(), capacity, "rehashed in place at {i}");
        }
        assert_eq!(map.len(), i as usize);
    }

    #[test]
    fn a_timed_step_finishes_growing() {
        let mut order = BTreeMap::new();
        let mut map = GrowingMap::default();
        let n = fill_until_growing(&mut map, &mut order, 0);
        while map.step_for(&order, std::time::Duration::from_millis(1)) {}
        assert!(!map.is_growing());
        assert_eq!(map.len(), n as usize);
    }

    #[test]
    fn a_step_moves_at_most_its_budget() {
        let mut order = BTreeMap::new();
        let mut map = GrowingMap::default();
        fill_until_growing(&mut map, &mut order, 0);
        let before = map.live.len();
        map.step(&order, 3);
        assert!(map.live.len() <= before + 3);
    }
}
