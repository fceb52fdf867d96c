//! At-least-once offsets: which input offset may be stored for commit. An offset is stored
//! only once every message before it has finished (its prediction delivered, its dead letter
//! stored, or no prediction by design), and it trails far enough for a restart to rebuild
//! every stream's window from the log: for each stream of a partition, the offsets of the last
//! `rewind` vectors before its first unfinished one are kept.
use std::collections::{BTreeSet, HashMap, VecDeque};

use augur_actors::types::StreamKey;
use tokio::sync::mpsc;

/// Reports (partition, offset) when the last clone of its [`Ack`] is dropped.
pub(super) struct OffsetDone {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) tx: mpsc::UnboundedSender<(i32, i64)>,
}

/// Kafka's outputs retry until delivered (or give up on a permanent error, which must release
/// the offset), so a completion never fails here.
impl augur_actors::types::Completion for OffsetDone {}

impl Drop for OffsetDone {
    fn drop(&mut self) {
        let _ = self.tx.send((self.partition, self.offset));
    }
}

/// Per partition: what was consumed and not finished, and the recent offsets of each stream.
#[derive(Debug, Default)]
struct PartitionTrack {
    pending: BTreeSet<i64>,
    /// Offsets of a stream's messages: the last `rewind` before its first unfinished one, and
    /// every one after it.
    streams: HashMap<StreamKey, VecDeque<i64>>,
    next: i64,
    stored: i64,
}

/// Decides which offset may be stored for commit.
#[derive(Debug)]
pub struct Tracker {
    rewind: usize,
    parts: HashMap<i32, PartitionTrack>,
}

impl Tracker {
    pub fn new(rewind: usize) -> Self {
        Tracker {
            rewind,
            parts: HashMap::new(),
        }
    }

    pub fn consumed(&mut self, partition: i32, offset: i64, keys: impl Iterator<Item = StreamKey>) {
        let p = self.parts.entry(partition).or_default();
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
        for k in keys {
            let q = p.streams.entry(k).or_default();
            if q.back() != Some(&offset) {
                q.push_back(offset);
            }
        }
    }

    pub fn complete(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.pending.remove(&offset);
        }
    }

    /// The offset to store for `partition` (the next message a restart reads), if it advanced.
    pub fn advance(&mut self, partition: i32) -> Option<i64> {
        let rewind = self.rewind;
        let p = self.parts.get_mut(&partition)?;
        for q in p.streams.values_mut() {
            let first_pending = q.iter().position(|o| p.pending.contains(o)).unwrap_or(q.len());
            let drop = first_pending.saturating_sub(rewind);
            q.drain(..drop);
        }
        p.streams.retain(|_, q| !q.is_empty());
        let safe = p
            .pending
            .first()
            .copied()
            .into_iter()
            .chain(p.streams.values().filter_map(|q| q.front().copied()))
            .min()
            .unwrap_or(p.next);
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }

    pub fn pending(&self) -> usize {
        self.parts.values().map(|p| p.pending.len()).sum()
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn k(s: &str) -> StreamKey {
        StreamKey::new(s, "1m")
    }

    #[test]
    fn test_offset_advances_over_finished_messages_only() {
        let mut t = Tracker::new(0);
        for o in 0..3 {
            t.consumed(0, o, std::iter::empty());
        }
        t.complete(0, 1);
        assert_eq!(t.advance(0), None, "0 is unfinished");
        t.complete(0, 0);
        assert_eq!(t.advance(0), Some(2), "0 and 1 done: a restart reads from 2");
        t.complete(0, 2);
        assert_eq!(t.advance(0), Some(3));
    }

    #[test]
    fn test_stored_offset_trails_by_each_streams_window() {
        let mut t = Tracker::new(2);
        // two streams interleaved on one partition: A at even offsets, B at odd
        for o in 0..10 {
            t.consumed(0, o, std::iter::once(k(if o % 2 == 0 { "A" } else { "B" })));
        }
        for o in 0..10 {
            t.complete(0, o);
        }
        // all done: keep the last 2 of each stream (A: 6, 8; B: 7, 9): restart at 6
        assert_eq!(t.advance(0), Some(6));
        // B's 11 unfinished: keep B's 2 before it (7, 9) and it; A keeps 6, 8 (then 10 done)
        t.consumed(0, 10, std::iter::once(k("A")));
        t.consumed(0, 11, std::iter::once(k("B")));
        t.complete(0, 10);
        assert_eq!(t.advance(0), Some(7));
    }

    #[test]
    fn test_rejected_messages_without_vectors_still_hold_the_offset_until_finished() {
        let mut t = Tracker::new(5);
        t.consumed(3, 40, std::iter::empty());
        assert_eq!(
            t.advance(3),
            Some(40),
            "a restart reads the unfinished message again"
        );
        assert_eq!(t.advance(3), None, "nothing new");
        t.complete(3, 40);
        assert_eq!(t.advance(3), Some(41));
        assert_eq!(t.pending(), 0);
    }
}
