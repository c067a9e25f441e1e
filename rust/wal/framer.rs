//! Framing appended records into the bytes the next write of the current segment carries.
//!
//! The framer owns the tail of the current segment that has not been handed to the
//! `StorageIo` yet: `append` checks, numbers and frames a record into it (one CRC32C pass
//! and one copy, no Python object), and the log hands the bytes off in large writes (about
//! a megabyte as appends go, the rest at commit). It also decides when a record no longer
//! fits the segment: the log must then make the segment durable and start the next one.
//!
//! Rejected: framing in Python (`struct` + `zlib.crc32` per record costs more than the
//! write itself, which is what the hand-written baseline pays); one `submit_append` per
//! record (a token, a completion and a buffer slot each, for 256 bytes).

use super::format::{frame_record, SegmentHeader, MAX_PAYLOAD, RECORD_HEADER_LEN};

/// What `append` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// The record is framed, with this LSN.
    Lsn(u64),
    /// The segment already holds records and this one would take it past its size: start a
    /// new segment (after making this one durable) and append again.
    NeedsNewSegment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a record payload holds at most {MAX_PAYLOAD} bytes (its length is a u32); got {}",
            self.0
        )
    }
}

#[derive(Debug)]
pub struct Framer {
    seed: u32,
    next_lsn: u64,
    segment_bytes: u64,
    /// File offset of `pending[0]`: everything before it was handed off.
    handed_off: u64,
    pending: Vec<u8>,
    records_in_segment: u64,
}

impl Framer {
    /// A framer whose next record gets `next_lsn`; `start_segment` must come first.
    pub fn new(segment_bytes: u64, next_lsn: u64) -> Self {
        Self {
            seed: 0,
            next_lsn,
            segment_bytes,
            handed_off: 0,
            pending: Vec::new(),
            records_in_segment: 0,
        }
    }

    /// Appends go, from now on, to the segment with `header`, whose valid bytes end at file
    /// offset `end` and which holds `records` records. Everything framed before must have
    /// been handed off.
    pub fn start_segment(&mut self, header: &SegmentHeader, end: u64, records: u64) {
        assert!(
            self.pending.is_empty(),
            "framed bytes left in the old segment"
        );
        self.seed = header.record_seed();
        self.handed_off = end;
        self.records_in_segment = records;
    }

    pub fn append(&mut self, payload: &[u8]) -> Result<Framed, TooLarge> {
        if payload.len() > MAX_PAYLOAD {
            return Err(TooLarge(payload.len()));
        }
        let size = (RECORD_HEADER_LEN + payload.len()) as u64;
        if self.records_in_segment > 0 && self.end() + size > self.segment_bytes {
            return Ok(Framed::NeedsNewSegment);
        }
        let lsn = self.next_lsn;
        frame_record(&mut self.pending, self.seed, lsn, payload);
        self.next_lsn += 1;
        self.records_in_segment += 1;
        Ok(Framed::Lsn(lsn))
    }

    /// The framed bytes not handed off yet, and the file offset they go to.
    pub fn pending(&self) -> (u64, &[u8]) {
        (self.handed_off, &self.pending)
    }

    /// The pending bytes now belong to a write; the buffer keeps its capacity for the next.
    pub fn mark_handed_off(&mut self) {
        self.handed_off += self.pending.len() as u64;
        self.pending.clear();
    }

    /// File offset of the end of the last framed record.
    pub fn end(&self) -> u64 {
        self.handed_off + self.pending.len() as u64
    }

    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    pub fn records_in_segment(&self) -> u64 {
        self.records_in_segment
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{RecordHeader, SEGMENT_HEADER_LEN};
    use super::*;

    fn framer(segment_bytes: u64) -> Framer {
        let mut f = Framer::new(segment_bytes, 1);
        let header = SegmentHeader {
            first_lsn: 1,
            salt: 3,
        };
        f.start_segment(&header, SEGMENT_HEADER_LEN as u64, 0);
        f
    }

    #[test]
    fn records_get_consecutive_lsns_and_land_back_to_back() {
        let mut f = framer(1 << 20);
        assert_eq!(f.append(b"one"), Ok(Framed::Lsn(1)));
        assert_eq!(f.append(b""), Ok(Framed::Lsn(2)));
        assert_eq!(f.append(b"three"), Ok(Framed::Lsn(3)));
        let (offset, bytes) = f.pending();
        assert_eq!(offset, SEGMENT_HEADER_LEN as u64);
        assert_eq!(bytes.len(), 3 * RECORD_HEADER_LEN + 8);
        assert_eq!(RecordHeader::read(&bytes[19..]).lsn, 2);
        f.mark_handed_off();
        assert_eq!(
            f.pending().0,
            (SEGMENT_HEADER_LEN + 3 * RECORD_HEADER_LEN + 8) as u64
        );
        assert!(f.pending().1.is_empty());
    }

    #[test]
    fn a_full_segment_asks_for_a_new_one_and_a_large_record_gets_its_own() {
        let mut f = framer(100);
        assert_eq!(f.append(&[0; 40]), Ok(Framed::Lsn(1))); // ends at 32 + 56 = 88
        assert_eq!(f.append(&[0; 0]), Ok(Framed::NeedsNewSegment)); // 88 + 16 > 100
        f.mark_handed_off();
        let next = SegmentHeader {
            first_lsn: 2,
            salt: 4,
        };
        f.start_segment(&next, SEGMENT_HEADER_LEN as u64, 0);
        // Larger than the whole segment: accepted as the first record of an empty segment.
        assert_eq!(f.append(&[0; 500]), Ok(Framed::Lsn(2)));
        assert_eq!(f.append(b"x"), Ok(Framed::NeedsNewSegment));
        assert_eq!(f.last_lsn(), 2);
    }
}
