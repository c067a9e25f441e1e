//! The on-disk format of `storage_io.wal`, version 1 (docs/wal-format.md, byte by byte).
//!
//! A segment file is a 32-byte header followed by records packed back to back, no padding:
//!
//! ```text
//! header:  magic [8] | version u32 | header CRC32C u32 | first LSN u64 | salt u64
//! record:  CRC32C u32 | payload length u32 | LSN u64 | payload [length]
//! ```
//!
//! All integers little-endian. The record CRC32C covers the segment's salt (8 bytes), then
//! bytes 4..16 of the record header (length and LSN), then the payload: a record left over
//! from another segment (a reused or preallocated file, a stale copy) fails its check even
//! when its bytes are intact, because its salt differs; zero-filled bytes fail too.
//!
//! Rejected: a per-record type byte for fragments (LevelDB's 32 KiB blocks) — we never split
//! a record, so a record is one header and one payload; a 64-bit checksum — CRC32C is what
//! the hardware computes at >10 GB/s, and every record is also pinned by its LSN; a masked
//! CRC — nothing here stores a CRC inside checked data.

/// First 8 bytes of every segment. The high-bit first byte and the CR LF catch files that
/// went through a 7-bit or text-mode transfer (the PNG trick).
pub const MAGIC: [u8; 8] = *b"\x89SIOWAL\n";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 16;
/// The largest payload a record carries: its length is a u32.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_lsn: u64,
    pub salt: u64,
}

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer than `SEGMENT_HEADER_LEN` bytes.
    Short,
    BadMagic,
    UnknownVersion(u32),
    BadChecksum,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Short => write!(f, "segment header is incomplete"),
            HeaderProblem::BadMagic => write!(f, "not a storage_io WAL segment (bad magic)"),
            HeaderProblem::UnknownVersion(v) => {
                write!(
                    f,
                    "segment format version {v} is not supported (this reads 1)"
                )
            }
            HeaderProblem::BadChecksum => write!(f, "segment header fails its CRC32C"),
        }
    }
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

fn header_checksum(header: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&header[..12]),
        &header[16..SEGMENT_HEADER_LEN],
    )
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[24..32].copy_from_slice(&self.salt.to_le_bytes());
        let check = header_checksum(&out);
        out[12..16].copy_from_slice(&check.to_le_bytes());
        out
    }

    pub fn decode(data: &[u8]) -> Result<Self, HeaderProblem> {
        if data.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderProblem::Short);
        }
        if data[..8] != MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        let version = u32_at(data, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnknownVersion(version));
        }
        if u32_at(data, 12) != header_checksum(data) {
            return Err(HeaderProblem::BadChecksum);
        }
        Ok(Self {
            first_lsn: u64_at(data, 16),
            salt: u64_at(data, 24),
        })
    }

    /// The CRC32C state after the salt: every record check of this segment starts here.
    pub fn record_seed(&self) -> u32 {
        crc32c::crc32c(&self.salt.to_le_bytes())
    }
}

/// A record header as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub checksum: u32,
    pub length: u32,
    pub lsn: u64,
}

impl RecordHeader {
    /// Reads the header at the start of `data` (which must hold `RECORD_HEADER_LEN` bytes).
    pub fn read(data: &[u8]) -> Self {
        Self {
            checksum: u32_at(data, 0),
            length: u32_at(data, 4),
            lsn: u64_at(data, 8),
        }
    }
}

/// The check a record must carry: CRC32C of salt, length, LSN and payload.
pub fn record_checksum(seed: u32, length_and_lsn: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(seed, length_and_lsn), payload)
}

/// Appends one framed record to `out`.
pub fn frame_record(out: &mut Vec<u8>, seed: u32, lsn: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[8..16].copy_from_slice(&lsn.to_le_bytes());
    let check = record_checksum(seed, &head[4..], payload);
    head[..4].copy_from_slice(&check.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_every_field_is_checked() {
        let header = SegmentHeader {
            first_lsn: 42,
            salt: 0x0123_4567_89ab_cdef,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for at in 0..SEGMENT_HEADER_LEN {
            let mut bad = bytes;
            bad[at] ^= 0x10;
            assert!(
                SegmentHeader::decode(&bad).is_err(),
                "flip at {at} accepted"
            );
        }
        assert_eq!(
            SegmentHeader::decode(&bytes[..31]),
            Err(HeaderProblem::Short)
        );
    }

    #[test]
    fn the_checksum_is_crc32c_castagnoli() {
        // The standard check value, quoted in docs/wal-format.md.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn version_is_named_when_unknown() {
        let mut bytes = SegmentHeader {
            first_lsn: 1,
            salt: 7,
        }
        .encode();
        bytes[8] = 2;
        assert_eq!(
            SegmentHeader::decode(&bytes),
            Err(HeaderProblem::UnknownVersion(2))
        );
    }

    #[test]
    fn record_layout_is_as_documented() {
        let header = SegmentHeader {
            first_lsn: 1,
            salt: 99,
        };
        let mut out = Vec::new();
        frame_record(&mut out, header.record_seed(), 5, b"abc");
        assert_eq!(out.len(), RECORD_HEADER_LEN + 3);
        let head = RecordHeader::read(&out);
        assert_eq!((head.length, head.lsn), (3, 5));
        // The documented check, spelled out from its parts.
        let mut covered = 99u64.to_le_bytes().to_vec();
        covered.extend_from_slice(&out[4..]);
        assert_eq!(head.checksum, crc32c::crc32c(&covered));
        assert_eq!(&out[16..], b"abc");
    }

    #[test]
    fn the_same_record_under_another_salt_fails_its_check() {
        let a = SegmentHeader {
            first_lsn: 1,
            salt: 1,
        };
        let b = SegmentHeader {
            first_lsn: 1,
            salt: 2,
        };
        let mut out = Vec::new();
        frame_record(&mut out, a.record_seed(), 1, b"payload");
        let head = RecordHeader::read(&out);
        assert_ne!(
            head.checksum,
            record_checksum(b.record_seed(), &out[4..16], &out[16..])
        );
    }
}
