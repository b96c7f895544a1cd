//! Subscribers and broadcast: a session's events numbered (`seq`),
//! serialized once into its arena, retained for resume within the
//! retention's bounds, and the same bytes handed to every subscriber.

use super::SessionTable;
use crate::events::{Event, EventArena, EventData};
use crate::journal::Change;
use crate::sink::{ConnId, Sink};

/// Capacity of the event scratch buffer kept between broadcasts.
const SCRATCH_KEPT: usize = 64 * 1024;

/// How many `seq` numbers one journal record reserves ahead.
const SEQ_BLOCK: u64 = 1024;

impl SessionTable {
    pub fn subscribe(&mut self, id: &str, conn: ConnId) {
        self.subscribers
            .entry(id.to_owned())
            .or_default()
            .push(conn);
    }

    pub fn unsubscribe(&mut self, id: &str, conn: ConnId) {
        if let Some(list) = self.subscribers.get_mut(id) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.subscribers.remove(id);
            }
        }
    }

    pub fn subscribers(&self, id: &str) -> &[ConnId] {
        self.subscribers.get(id).map_or(&[], Vec::as_slice)
    }

    /// Gives the next `seq` of session `id` to an event, serializes it once
    /// and queues the same bytes to every subscriber. Returns the `seq`.
    pub fn broadcast(
        &mut self,
        id: &str,
        op: &str,
        data: impl EventData,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        self.broadcast_each_to(id, op, std::iter::once(data), None, sink)
    }

    /// [`broadcast`](Self::broadcast), handing the event to `also` too: the
    /// AG-UI run a turn's events stream to, which is not a subscriber.
    pub fn broadcast_to(
        &mut self,
        id: &str,
        op: &str,
        data: impl EventData,
        also: Option<ConnId>,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        self.broadcast_each_to(id, op, std::iter::once(data), also, sink)
    }

    /// [`broadcast`](Self::broadcast) of several events of one kind, in
    /// order, with one lookup of the session and its subscribers for all of
    /// them (a run of streamed tokens), handing each to `also` too (see
    /// [`broadcast_to`](Self::broadcast_to)). Returns the last `seq`.
    pub fn broadcast_each_to<D: EventData>(
        &mut self,
        id: &str,
        op: &str,
        data: impl IntoIterator<Item = D>,
        also: Option<ConnId>,
        sink: &mut dyn Sink,
    ) -> Option<u64> {
        let session = self.sessions.get_mut(id)?;
        let subscribers = self.subscribers.get(id).map_or(&[][..], Vec::as_slice);
        let mut last = None;
        for data in data {
            session.seq += 1;
            let seq = session.seq;
            let reserved = seq > session.seq_reserved;
            if reserved {
                session.seq_reserved = seq + SEQ_BLOCK;
                self.pending.push(Change::Seq {
                    id: id.to_owned(),
                    seq: session.seq_reserved,
                });
            }
            if op == "token" {
                self.metrics.tokens += 1;
            }
            let hot = session.hot.get_or_insert_with(Box::default);
            // A quarter of the retention budget at most goes to the chunk
            // being filled (it counts towards the budget).
            let arena = hot
                .arena
                .get_or_insert_with(|| EventArena::capped(self.retention.bytes / 4));
            let mut event = Event::new_in(arena, &mut self.scratch, op, data, Some(seq));
            // A turn's end, a decision on approvals, and any `seq` beyond
            // what the journal promised, go out only once the journal has
            // them (no `seq` is ever reused).
            if reserved
                || matches!(
                    op,
                    "done" | "error" | "approval_required" | "approval_resolved"
                )
            {
                event = event.acknowledging();
            }
            hot.retained_bytes += event.size();
            hot.retained.push_back((seq, event.clone()));
            // The chunk being filled is pinned whatever is retained: it
            // counts (a session holds at most one more partly used chunk,
            // the oldest event's, see `EventArena`).
            let pinned = arena.chunk_capacity();
            while hot.retained.len() > self.retention.events
                || (hot.retained_bytes + pinned > self.retention.bytes && hot.retained.len() > 1)
            {
                if let Some((_, old)) = hot.retained.pop_front() {
                    hot.retained_bytes -= old.size();
                }
            }
            for &conn in subscribers.iter().chain(also.as_ref()) {
                sink.deliver(conn, &event);
            }
            last = Some(seq);
        }
        if self.scratch.capacity() > SCRATCH_KEPT {
            // One huge event must not pin its size for the life of the table.
            self.scratch = Vec::new();
        }
        last
    }
}
