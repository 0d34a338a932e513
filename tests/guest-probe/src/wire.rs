// SPDX-License-Identifier: GPL-2.0-or-later
//! The message format exchanged between probes, over TCP and UDP alike.
//!
//! A message is `MSG_LEN` (56) bytes, little-endian:
//!
//! | offset | size | field                                          |
//! |--------|------|------------------------------------------------|
//! | 0      | 8    | sequence number, from 0, per (sender, proto)   |
//! | 8      | 4    | sender id (its `mekha.id`)                     |
//! | 12     | 40   | payload, `payload(sender, seq)`                |
//! | 52     | 4    | CRC-32 (IEEE) of bytes 0..52                   |
//!
//! A fixed size frames the TCP stream; a UDP datagram holds one message.

use crate::compute::splitmix64;

pub const PAYLOAD_LEN: usize = 40;
pub const MSG_LEN: usize = 8 + 4 + PAYLOAD_LEN + 4;
const CRC_AT: usize = MSG_LEN - 4;

/// A message that decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
    pub seq: u64,
    pub sender: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A datagram of the wrong size.
    Length(usize),
    /// The CRC does not match; the header fields as they read.
    Crc { seq: u64, sender: u32 },
    /// The CRC matches but the payload is not the one of (sender, seq).
    Payload { seq: u64, sender: u32 },
}

impl DecodeError {
    /// Short name for events.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Length(_) => "length",
            DecodeError::Crc { .. } => "crc",
            DecodeError::Payload { .. } => "payload",
        }
    }
}

/// The payload of message `seq` from `sender`: 40 bytes of splitmix64
/// output seeded from both.
pub fn payload(sender: u32, seq: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    let mut x = (u64::from(sender) << 48) ^ seq;
    for chunk in p.chunks_mut(8) {
        x = splitmix64(x);
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    p
}

pub fn encode(sender: u32, seq: u64) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[0..8].copy_from_slice(&seq.to_le_bytes());
    m[8..12].copy_from_slice(&sender.to_le_bytes());
    m[12..CRC_AT].copy_from_slice(&payload(sender, seq));
    let crc = crc32fast::hash(&m[..CRC_AT]);
    m[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    m
}

pub fn decode(buf: &[u8]) -> Result<Msg, DecodeError> {
    if buf.len() != MSG_LEN {
        return Err(DecodeError::Length(buf.len()));
    }
    let seq = u64::from_le_bytes(buf[0..8].try_into().unwrap());
    let sender = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let crc = u32::from_le_bytes(buf[CRC_AT..].try_into().unwrap());
    if crc32fast::hash(&buf[..CRC_AT]) != crc {
        return Err(DecodeError::Crc { seq, sender });
    }
    if buf[12..CRC_AT] != payload(sender, seq) {
        return Err(DecodeError::Payload { seq, sender });
    }
    Ok(Msg { seq, sender })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (sender, seq) in [(0, 0), (1, 1), (7, 123_456), (u32::MAX, u64::MAX)] {
            let m = encode(sender, seq);
            assert_eq!(m.len(), 56);
            assert_eq!(decode(&m), Ok(Msg { seq, sender }));
        }
    }

    #[test]
    fn layout() {
        let m = encode(2, 5);
        assert_eq!(&m[0..8], &5u64.to_le_bytes());
        assert_eq!(&m[8..12], &2u32.to_le_bytes());
        assert_eq!(&m[52..], &crc32fast::hash(&m[..52]).to_le_bytes());
    }

    #[test]
    fn payload_depends_on_sender_and_seq() {
        assert_eq!(payload(1, 2), payload(1, 2));
        assert_ne!(payload(1, 2), payload(1, 3));
        assert_ne!(payload(1, 2), payload(2, 2));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let m = encode(3, 99);
        for bit in 0..MSG_LEN * 8 {
            let mut c = m;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(decode(&c), Err(DecodeError::Crc { .. })), "bit {bit}");
        }
    }

    #[test]
    fn wrong_payload_with_good_crc() {
        let mut m = encode(3, 99);
        m[20] ^= 0xff;
        let crc = crc32fast::hash(&m[..52]);
        m[52..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&m), Err(DecodeError::Payload { seq: 99, sender: 3 }));
    }

    #[test]
    fn wrong_length() {
        let m = encode(3, 99);
        assert_eq!(decode(&m[..55]), Err(DecodeError::Length(55)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        assert_eq!(DecodeError::Length(1).reason(), "length");
    }
}
