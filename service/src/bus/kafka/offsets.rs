//! At-least-once offsets: which input offset may be stored for commit. An offset is stored
//! only once every message before it has finished (its prediction delivered, its dead letter
//! stored, or no prediction by design), and it trails far enough for a restart to rebuild
//! every stream's window from the log: for each stream of a partition, the offsets of the last
//! `rewind` vectors before its first unfinished one are kept. That hold is bounded: never more
//! than `max_messages` behind the partition's newest offset, and released by a stream quiet
//! for `quiet` (a stream that stopped, or never filled its window, cannot pin the partition).
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use augur_actors::types::StreamKey;
use tokio::sync::mpsc;

/// Reports (partition, epoch, offset) when the last clone of its [`Ack`] is dropped.
pub(super) struct OffsetDone {
    pub(super) partition: i32,
    /// Which ownership of the partition consumed it (see `handover.rs`).
    pub(super) epoch: u64,
    pub(super) offset: i64,
    pub(super) tx: mpsc::UnboundedSender<(i32, u64, i64)>,
}

/// Kafka's outputs retry until delivered (or give up on a permanent error, which must release
/// the offset), so a completion never fails here; and an offset cannot be given back, so a
/// sink must not shed its prediction.
impl augur_actors::types::Completion for OffsetDone {
    fn must_deliver(&self) -> bool {
        true
    }
}

impl Drop for OffsetDone {
    fn drop(&mut self) {
        let _ = self.tx.send((self.partition, self.epoch, self.offset));
    }
}

/// How far the stored offset may trail the consumed one to refill windows after a restart.
#[derive(Debug, Clone, Copy)]
pub struct Rewind {
    /// Finished messages kept per stream before its first unfinished one (the longest window
    /// less one: what refills it).
    pub per_stream: usize,
    /// Offsets: a finished message more than this far behind the partition's newest is never
    /// held (a restart re-reads at most this much history per partition).
    pub max_messages: i64,
    /// A stream with no message for this long releases its hold (its window is rebuilt live
    /// after a restart).
    pub quiet: Duration,
}

impl Rewind {
    pub fn per_stream(n: usize) -> Self {
        Rewind {
            per_stream: n,
            max_messages: 50_000,
            quiet: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// A stream's hold on its partition.
#[derive(Debug)]
struct Held {
    /// Offsets of a stream's messages: the last `per_stream` before its first unfinished one,
    /// and every one after it.
    offsets: VecDeque<i64>,
    last_seen: Instant,
    /// The newest sequence of the stream among its kept offsets' vectors.
    last_sequence: Option<u64>,
}

/// Per partition: what was consumed and not finished, and the recent offsets of each stream.
#[derive(Debug, Default)]
struct PartitionTrack {
    /// Unfinished copies per offset: the same offset consumed again (a rebalance re-delivers
    /// it while its first copy is in flight) is finished only when every copy is.
    pending: BTreeMap<i64, u32>,
    streams: HashMap<StreamKey, Held>,
    next: i64,
    stored: i64,
}

/// Decides which offset may be stored for commit.
#[derive(Debug)]
pub struct Tracker {
    rewind: Rewind,
    parts: HashMap<i32, PartitionTrack>,
    pending_total: usize,
}

impl Tracker {
    pub fn new(rewind: Rewind) -> Self {
        Tracker {
            rewind,
            parts: HashMap::new(),
            pending_total: 0,
        }
    }

    /// A message consumed at `offset`, holding the vectors `(stream, sequence)`. A vector
    /// counts toward its stream's kept history only when it is newer than the stream's last:
    /// a repeated message (a producer's retry through a broken link) is read again on a
    /// hand-over, but its vectors are dropped there as duplicates, so counting it would leave
    /// the rebuilt window a vector short and the stream's next event without a prediction.
    pub fn consumed(
        &mut self,
        partition: i32,
        offset: i64,
        vectors: impl Iterator<Item = (StreamKey, u64)>,
        now: Instant,
    ) {
        let p = self.parts.entry(partition).or_default();
        *p.pending.entry(offset).or_default() += 1;
        self.pending_total += 1;
        p.next = p.next.max(offset + 1);
        for (k, sequence) in vectors {
            let h = p.streams.entry(k).or_insert_with(|| Held {
                offsets: VecDeque::new(),
                last_seen: now,
                last_sequence: None,
            });
            h.last_seen = now;
            if h.last_sequence.is_some_and(|l| sequence <= l) {
                continue;
            }
            h.last_sequence = Some(sequence);
            if h.offsets.back() != Some(&offset) {
                h.offsets.push_back(offset);
            }
        }
    }

    pub fn complete(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&partition)
            && let Some(n) = p.pending.get_mut(&offset)
        {
            *n -= 1;
            self.pending_total -= 1;
            if *n == 0 {
                p.pending.remove(&offset);
            }
        }
    }

    /// The offset to store for `partition` (the next message a restart reads), if it advanced.
    pub fn advance(&mut self, partition: i32, now: Instant) -> Option<i64> {
        let rewind = self.rewind;
        let p = self.parts.get_mut(&partition)?;
        let horizon = p.next.saturating_sub(rewind.max_messages);
        for h in p.streams.values_mut() {
            let first_pending = h
                .offsets
                .iter()
                .position(|o| p.pending.contains_key(o))
                .unwrap_or(h.offsets.len());
            let quiet = now.saturating_duration_since(h.last_seen) >= rewind.quiet;
            let beyond = h
                .offsets
                .iter()
                .take(first_pending)
                .take_while(|&&o| o < horizon)
                .count();
            let drop = if quiet {
                first_pending
            } else {
                first_pending.saturating_sub(rewind.per_stream).max(beyond)
            };
            h.offsets.drain(..drop);
            // Past an unfinished message, finished ones beyond the horizon are not kept either
            // (one stuck message must not make every later offset a memory).
            if h.offsets.len() > rewind.per_stream && h.offsets.front().is_some_and(|&o| o < horizon) {
                let pending = &p.pending;
                h.offsets.retain(|o| *o >= horizon || pending.contains_key(o));
            }
        }
        p.streams.retain(|_, h| !h.offsets.is_empty());
        let safe = p
            .pending
            .first_key_value()
            .map(|(&o, _)| o)
            .into_iter()
            .chain(p.streams.values().filter_map(|h| h.offsets.front().copied()))
            .min()
            .unwrap_or(p.next);
        (safe > p.stored).then(|| {
            p.stored = safe;
            safe
        })
    }

    /// The offset a new owner of `partition` reads from (the last `advance` gave), if any.
    pub fn stored(&self, partition: i32) -> Option<i64> {
        self.parts
            .get(&partition)
            .filter(|p| p.stored > 0)
            .map(|p| p.stored)
    }

    /// The first unfinished offset of `partition` (the next to consume when none is): every
    /// message before it has finished.
    pub fn frontier(&self, partition: i32) -> Option<i64> {
        self.parts
            .get(&partition)
            .map(|p| p.pending.first_key_value().map_or(p.next, |(&o, _)| o))
    }

    /// The next offset to consume on `partition` (one past the newest consumed).
    pub fn next(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|p| p.next)
    }

    /// Forgets `partition` (it moved to another owner); its copies in flight no longer count.
    /// Returns how many there were.
    pub fn remove(&mut self, partition: i32) -> usize {
        let Some(p) = self.parts.remove(&partition) else {
            return 0;
        };
        let copies = p.pending.values().map(|&n| n as usize).sum();
        self.pending_total -= copies;
        copies
    }

    /// Unfinished message copies (kept as a running count: asked after every completion).
    pub fn pending(&self) -> usize {
        self.pending_total
    }

    /// Offsets remembered for rewinds, over every stream and partition.
    pub fn held_offsets(&self) -> usize {
        self.parts
            .values()
            .flat_map(|p| p.streams.values())
            .map(|h| h.offsets.len())
            .sum()
    }

    /// Streams holding a rewind, over every partition (a gauge: it must not grow without bound).
    pub fn streams_held(&self) -> usize {
        self.parts.values().map(|p| p.streams.len()).sum()
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn k(s: &str) -> StreamKey {
        StreamKey::new(s, "1m")
    }

    #[test]
    fn test_offset_advances_over_finished_messages_only() {
        let mut t = Tracker::new(Rewind::per_stream(0));
        for o in 0..3 {
            t.consumed(0, o, std::iter::empty(), now());
        }
        t.complete(0, 1);
        assert_eq!(t.advance(0, now()), None, "0 is unfinished");
        t.complete(0, 0);
        assert_eq!(
            t.advance(0, now()),
            Some(2),
            "0 and 1 done: a restart reads from 2"
        );
        t.complete(0, 2);
        assert_eq!(t.advance(0, now()), Some(3));
    }

    #[test]
    fn test_stored_offset_trails_by_each_streams_window() {
        let mut t = Tracker::new(Rewind::per_stream(2));
        // two streams interleaved on one partition: A at even offsets, B at odd
        for o in 0..10 {
            t.consumed(
                0,
                o,
                std::iter::once((k(if o % 2 == 0 { "A" } else { "B" }), o as u64)),
                now(),
            );
        }
        for o in 0..10 {
            t.complete(0, o);
        }
        // all done: keep the last 2 of each stream (A: 6, 8; B: 7, 9): restart at 6
        assert_eq!(t.advance(0, now()), Some(6));
        // B's 11 unfinished: keep B's 2 before it (7, 9) and it; A keeps 6, 8 (then 10 done)
        t.consumed(0, 10, std::iter::once((k("A"), 10)), now());
        t.consumed(0, 11, std::iter::once((k("B"), 11)), now());
        t.complete(0, 10);
        assert_eq!(t.advance(0, now()), Some(7));
    }

    #[test]
    fn test_a_repeated_message_does_not_count_toward_a_streams_kept_history() {
        // A producer's retry through a cut wrote vector 75 twice (offsets 75 and 76). The
        // stored offset must keep 31 distinct vectors of the stream for the window to rebuild:
        // 31 offsets would hold only 30 (a hand-over then left the next event warming: lost).
        let mut t = Tracker::new(Rewind::per_stream(31));
        for o in 0..=81 {
            let sequence = if o <= 75 { o as u64 } else { o as u64 - 1 };
            t.consumed(0, o, std::iter::once((k("A"), sequence)), now());
            t.complete(0, o);
        }
        let stored = t.advance(0, now()).unwrap();
        let distinct: std::collections::BTreeSet<u64> = (stored..=81)
            .map(|o| if o <= 75 { o as u64 } else { o as u64 - 1 })
            .collect();
        assert_eq!(distinct.len(), 31, "stored {stored}");
    }

    #[test]
    fn test_rejected_messages_without_vectors_still_hold_the_offset_until_finished() {
        let mut t = Tracker::new(Rewind::per_stream(5));
        t.consumed(3, 40, std::iter::empty(), now());
        assert_eq!(
            t.advance(3, now()),
            Some(40),
            "a restart reads the unfinished message again"
        );
        assert_eq!(t.advance(3, now()), None, "nothing new");
        t.complete(3, 40);
        assert_eq!(t.advance(3, now()), Some(41));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn test_a_quiet_short_stream_does_not_pin_the_stored_offset() {
        // A stream of 10 vectors that never reached its window, then 100,000 finished
        // messages of another stream: the stored offset must move past the short one.
        let mut t = Tracker::new(Rewind::per_stream(32));
        for o in 0..10 {
            t.consumed(0, o, std::iter::once((k("SHORT"), o as u64)), now());
            t.complete(0, o);
        }
        for o in 10..100_010 {
            t.consumed(0, o, std::iter::once((k("BUSY"), o as u64)), now());
            t.complete(0, o);
        }
        let stored = t.advance(0, now());
        assert!(
            stored.is_some_and(|s| s > 10),
            "stored offset {stored:?}: the quiet stream pinned the partition"
        );
        assert_eq!(t.streams_held(), 1, "the short stream no longer holds anything");
    }

    #[test]
    fn test_a_stream_quiet_past_the_limit_releases_its_hold() {
        let rewind = Rewind {
            per_stream: 32,
            max_messages: 1_000_000,
            quiet: Duration::from_secs(60),
        };
        let mut t = Tracker::new(rewind);
        let start = now();
        for o in 0..5 {
            t.consumed(0, o, std::iter::once((k("DAILY"), o as u64)), start);
            t.complete(0, o);
        }
        t.consumed(0, 5, std::iter::once((k("BUSY"), 5)), start);
        t.complete(0, 5);
        assert_eq!(
            t.advance(0, start),
            None,
            "within the limit the quiet stream's window is kept"
        );
        let later = start + Duration::from_secs(61);
        t.consumed(0, 6, std::iter::once((k("BUSY"), 6)), later);
        t.complete(0, 6);
        assert_eq!(t.advance(0, later), Some(5), "DAILY released; BUSY keeps its own");
    }

    #[test]
    fn test_streams_ever_seen_do_not_accumulate() {
        let mut t = Tracker::new(Rewind {
            per_stream: 32,
            max_messages: 1_000,
            quiet: Duration::from_secs(3600),
        });
        for o in 0..20_000 {
            t.consumed(0, o, std::iter::once((k(&format!("S{o}")), o as u64)), now());
            t.complete(0, o);
        }
        t.advance(0, now());
        assert!(t.streams_held() <= 1_000, "{} streams held", t.streams_held());
    }

    #[test]
    fn test_a_redelivered_offset_is_finished_only_when_every_copy_is() {
        // After a rebalance the same offset can be consumed again while its first copy is
        // still in flight: one completion must not finish both.
        let mut t = Tracker::new(Rewind::per_stream(0));
        t.consumed(0, 0, std::iter::empty(), now());
        t.consumed(0, 0, std::iter::empty(), now());
        t.complete(0, 0);
        assert_eq!(
            t.advance(0, now()),
            None,
            "one copy of offset 0 is still in flight"
        );
        t.complete(0, 0);
        assert_eq!(t.advance(0, now()), Some(1));
    }

    #[test]
    fn test_one_stuck_message_does_not_let_a_streams_offsets_grow_without_bound() {
        // A message whose output never finishes (a produce retrying for ever) holds the
        // stored offset, as it must; the finished messages after it are not all remembered.
        let mut t = Tracker::new(Rewind {
            per_stream: 32,
            max_messages: 1_000,
            quiet: Duration::from_secs(3600),
        });
        t.consumed(0, 0, std::iter::once((k("A"), 0)), now());
        for o in 1..50_000 {
            t.consumed(0, o, std::iter::once((k("A"), o as u64)), now());
            t.complete(0, o);
        }
        t.advance(0, now());
        assert!(t.held_offsets() <= 1_100, "{} offsets held", t.held_offsets());
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn test_frontier_is_the_first_unfinished_offset_and_remove_forgets_the_partition() {
        let mut t = Tracker::new(Rewind::per_stream(2));
        assert_eq!(t.frontier(0), None, "nothing consumed");
        for o in 10..15 {
            t.consumed(0, o, std::iter::once((k("A"), o as u64)), now());
        }
        t.consumed(1, 0, std::iter::empty(), now());
        for o in [10, 11, 13] {
            t.complete(0, o);
        }
        assert_eq!(t.frontier(0), Some(12), "12 is unfinished");
        t.advance(0, now());
        assert_eq!(t.stored(0), Some(10), "the window of A before 12 is kept");
        t.complete(0, 12);
        t.complete(0, 14);
        assert_eq!(t.frontier(0), Some(15), "all done: the next to consume");
        assert_eq!(t.pending(), 1);
        assert_eq!(t.remove(1), 1, "partition 1 had one message in flight");
        assert_eq!(t.pending(), 0);
        t.complete(1, 0);
        assert_eq!(
            t.pending(),
            0,
            "a completion of a forgotten partition counts for nothing"
        );
    }
}
