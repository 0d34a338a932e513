// SPDX-License-Identifier: GPL-2.0-or-later
//! Receive-side checking of one message stream (one peer, one protocol):
//! lost, duplicated, reordered and corrupt messages.
//!
//! `next_seq` is one past the highest sequence number seen. A message above
//! it opens a gap: the skipped numbers count as lost. A message below it
//! that fills a gap is reordered (and no longer lost); any other message
//! below it is a duplicate. `lost` is therefore "missing right now".

use std::collections::BTreeMap;

/// What one valid message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The expected next message.
    InOrder,
    /// Ahead of the expected one: `first..=last` are missing (for now).
    Gap { first: u64, last: u64 },
    /// A message that had been counted lost arrived late.
    Reordered,
    /// A message seen before.
    Duplicate,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqCheck {
    /// One past the highest sequence number received.
    pub next_seq: u64,
    /// Valid messages received, duplicates included.
    pub received: u64,
    /// Sequence numbers below `next_seq` not received (yet).
    pub lost: u64,
    pub dup: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// The missing sequence numbers as ranges, start -> end (exclusive).
    missing: BTreeMap<u64, u64>,
}

impl SeqCheck {
    /// Account for a valid message with sequence number `seq`.
    pub fn accept(&mut self, seq: u64) -> Verdict {
        self.received += 1;
        if seq == self.next_seq {
            self.next_seq += 1;
            Verdict::InOrder
        } else if seq > self.next_seq {
            let first = self.next_seq;
            self.missing.insert(first, seq);
            self.lost += seq - first;
            self.next_seq = seq + 1;
            Verdict::Gap { first, last: seq - 1 }
        } else if self.take_missing(seq) {
            self.reordered += 1;
            Verdict::Reordered
        } else {
            self.dup += 1;
            Verdict::Duplicate
        }
    }

    /// Account for a message that failed to decode.
    pub fn corrupt(&mut self) {
        self.corrupt += 1;
    }

    /// Remove `seq` from the missing ranges; false when it was not missing.
    fn take_missing(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        self.lost -= 1;
        true
    }

    /// Every message `0..msgs` was received.
    pub fn complete(&self, msgs: u64) -> bool {
        self.next_seq >= msgs && self.missing.range(..msgs).next().is_none()
    }

    /// Any anomaly at all.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.dup == 0 && self.reordered == 0 && self.corrupt == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    fn feed(seqs: &[u64]) -> (SeqCheck, Vec<Verdict>) {
        let mut c = SeqCheck::default();
        let v = seqs.iter().map(|&s| c.accept(s)).collect();
        (c, v)
    }

    #[test]
    fn in_order_stream_is_clean() {
        let (c, v) = feed(&[0, 1, 2, 3, 4]);
        assert!(v.iter().all(|&v| v == InOrder));
        assert_eq!((c.next_seq, c.received), (5, 5));
        assert!(c.clean());
        assert!(c.complete(5));
        assert!(!c.complete(6));
        assert!(c.complete(0));
    }

    #[test]
    fn gap_counts_lost() {
        let (c, v) = feed(&[0, 1, 5, 6]);
        assert_eq!(v[2], Gap { first: 2, last: 4 });
        assert_eq!(v[3], InOrder);
        assert_eq!((c.lost, c.next_seq, c.received), (3, 7, 4));
        assert!(!c.complete(7));
        // A lost first message.
        let (c, v) = feed(&[1]);
        assert_eq!(v[0], Gap { first: 0, last: 0 });
        assert_eq!(c.lost, 1);
    }

    #[test]
    fn late_message_is_reordered_not_lost() {
        let (c, v) = feed(&[0, 2, 1, 3]);
        assert_eq!(v, vec![InOrder, Gap { first: 1, last: 1 }, Reordered, InOrder]);
        assert_eq!((c.lost, c.reordered, c.dup), (0, 1, 0));
        assert!(c.complete(4));
    }

    #[test]
    fn filling_a_gap_from_the_middle() {
        let (mut c, _) = feed(&[0, 10]);
        assert_eq!(c.lost, 9);
        for s in [5, 1, 9, 2, 3, 4, 6, 8, 7] {
            assert_eq!(c.accept(s), Reordered, "seq {s}");
        }
        assert_eq!((c.lost, c.reordered), (0, 9));
        assert!(c.complete(11));
        // Now every one of them again is a duplicate.
        for s in 0..=10 {
            assert_eq!(c.accept(s), Duplicate);
        }
        assert_eq!(c.dup, 11);
    }

    #[test]
    fn duplicates() {
        let (c, v) = feed(&[0, 1, 1, 0, 2, 2]);
        assert_eq!(v, vec![InOrder, InOrder, Duplicate, Duplicate, InOrder, Duplicate]);
        assert_eq!((c.dup, c.received, c.lost, c.next_seq), (3, 6, 0, 3));
        assert!(c.complete(3));
        // A duplicate of a late message is still a duplicate.
        let (c, v) = feed(&[0, 2, 1, 1]);
        assert_eq!(v[3], Duplicate);
        assert_eq!((c.reordered, c.dup), (1, 1));
    }

    #[test]
    fn corrupt_is_counted_apart() {
        let (mut c, _) = feed(&[0]);
        c.corrupt();
        assert_eq!((c.corrupt, c.received), (1, 1));
        assert!(!c.clean());
    }

    #[test]
    fn huge_gap_is_cheap() {
        let (mut c, _) = feed(&[0, 1 << 40]);
        assert_eq!(c.lost, (1 << 40) - 1);
        assert_eq!(c.accept(12345), Reordered);
        assert_eq!(c.lost, (1 << 40) - 2);
        assert!(!c.complete(2));
    }

    #[test]
    fn wire_and_check_together() {
        use crate::wire::{decode, encode};
        // Stream 0..6 as the network might deliver it: 2 lost, 4 before 3,
        // 1 twice, 5 corrupted in flight.
        let mut frames: Vec<[u8; crate::wire::MSG_LEN]> = [0, 1, 1, 4, 3].iter().map(|&s| encode(7, s)).collect();
        let mut bad = encode(7, 5);
        bad[30] ^= 4;
        frames.push(bad);
        let mut c = SeqCheck::default();
        let mut verdicts = Vec::new();
        for f in &frames {
            match decode(f) {
                Ok(m) => {
                    assert_eq!(m.sender, 7);
                    verdicts.push(c.accept(m.seq));
                }
                Err(_) => c.corrupt(),
            }
        }
        assert_eq!(verdicts, vec![InOrder, InOrder, Duplicate, Gap { first: 2, last: 3 }, Reordered]);
        assert_eq!((c.lost, c.dup, c.reordered, c.corrupt), (1, 1, 1, 1));
        assert_eq!(c.next_seq, 5);
    }
}
