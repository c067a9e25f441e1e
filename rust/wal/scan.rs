//! Reading segments back: the recovery check at open (`recover`) and replay (`Replay`).
//!
//! Recovery tells a torn tail from corruption. A crash leaves at most the end of the newest
//! segment unfinished: older segments are made durable before the next one is created (the
//! log's rotation rule), and a new segment's header is durable before any record goes into
//! it. So a failed check is a torn tail only in the newest segment, and only when no valid
//! record follows it anywhere in the file; a newest segment shorter than its header is a
//! rotation cut short. Anything else is corruption, reported with the file and offset, and
//! nothing is changed: the caller performs the cut that `recover` prescribes.
//!
//! "No valid record follows" is searched byte by byte after the failure, because the bad
//! record's length cannot be trusted; a candidate must carry a plausible LSN before its
//! CRC32C is computed, so the search costs about one load per byte.
//!
//! Files are mapped whole (`mapping`): no copy out of the page cache, which was most of a
//! replay's time when read with `read`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{
    record_checksum, HeaderProblem, RecordHeader, SegmentHeader, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use super::mapping::Mapping;

/// Why a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordProblem {
    /// The file ends inside the record.
    Incomplete,
    BadChecksum,
    /// A record that passes its check but carries another LSN than the one due: a gap or a
    /// reordering, never a torn write.
    WrongLsn {
        expected: u64,
        found: u64,
    },
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordProblem::Incomplete => write!(f, "the file ends inside a record"),
            RecordProblem::BadChecksum => write!(f, "record fails its CRC32C"),
            RecordProblem::WrongLsn { expected, found } => {
                write!(f, "record has LSN {found} where LSN {expected} is due")
            }
        }
    }
}

/// The record at `at`, or why there is none. `Ok(None)` at the exact end of `data`.
pub fn read_record(
    data: &[u8],
    at: usize,
    seed: u32,
    expected: u64,
) -> Result<Option<(u64, std::ops::Range<usize>)>, RecordProblem> {
    if at == data.len() {
        return Ok(None);
    }
    if data.len() - at < RECORD_HEADER_LEN {
        return Err(RecordProblem::Incomplete);
    }
    let head = RecordHeader::read(&data[at..]);
    let start = at + RECORD_HEADER_LEN;
    let Some(end) = start
        .checked_add(head.length as usize)
        .filter(|&e| e <= data.len())
    else {
        return Err(RecordProblem::Incomplete);
    };
    let payload = &data[start..end];
    if head.checksum != record_checksum(seed, &data[at + 4..start], payload) {
        return Err(RecordProblem::BadChecksum);
    }
    if head.lsn != expected {
        return Err(RecordProblem::WrongLsn {
            expected,
            found: head.lsn,
        });
    }
    Ok(Some((head.lsn, start..end)))
}

/// Whether a record that passes its check, with an LSN of at least `min_lsn`, starts
/// anywhere after offset `after`.
fn valid_record_after(data: &[u8], after: usize, seed: u32, min_lsn: u64) -> bool {
    // An LSN further than this from min_lsn cannot fit in the rest of the file.
    let max_lsn = min_lsn.saturating_add((data.len() / RECORD_HEADER_LEN) as u64);
    let mut at = after + 1;
    while at + RECORD_HEADER_LEN <= data.len() {
        let head = RecordHeader::read(&data[at..]);
        let start = at + RECORD_HEADER_LEN;
        if (min_lsn..=max_lsn).contains(&head.lsn) && head.length as usize <= data.len() - start {
            let end = start + head.length as usize;
            if head.checksum == record_checksum(seed, &data[at + 4..start], &data[start..end]) {
                return true;
            }
        }
        at += 1;
    }
    false
}

/// One segment's records, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: u64,
    /// End of the last valid record (the header's end when there is none).
    pub end: usize,
    pub failure: Option<ScanFailure>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanFailure {
    pub offset: usize,
    pub problem: RecordProblem,
    pub valid_record_follows: bool,
}

/// Checks every record of a segment whose header is `header`.
pub fn scan_records(data: &[u8], header: &SegmentHeader) -> SegmentScan {
    let seed = header.record_seed();
    let mut at = SEGMENT_HEADER_LEN;
    let mut lsn = header.first_lsn;
    loop {
        match read_record(data, at, seed, lsn) {
            Ok(Some((_, payload))) => {
                at = payload.end;
                lsn += 1;
            }
            Ok(None) => {
                return SegmentScan {
                    records: lsn - header.first_lsn,
                    end: at,
                    failure: None,
                }
            }
            Err(problem) => {
                let follows = matches!(problem, RecordProblem::WrongLsn { .. })
                    || valid_record_after(data, at, seed, lsn);
                return SegmentScan {
                    records: lsn - header.first_lsn,
                    end: at,
                    failure: Some(ScanFailure {
                        offset: at,
                        problem,
                        valid_record_follows: follows,
                    }),
                };
            }
        }
    }
}

/// A segment file as found in the directory: its path and the LSN its name says.
#[derive(Clone, Debug)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub name_lsn: u64,
}

/// A segment that passed recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSegment {
    pub path: PathBuf,
    pub first_lsn: u64,
    pub salt: u64,
    pub records: u64,
    /// End of its last valid record: where appends continue if it is the newest.
    pub end: u64,
    pub file_len: u64,
}

/// The cut recovery prescribes for a torn tail of the newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TornTail {
    /// Truncate the newest segment (the last of `segments`) to `at` bytes.
    Cut {
        path: PathBuf,
        at: u64,
        file_len: u64,
    },
    /// The newest segment file holds less than a header: a rotation cut short. Delete it;
    /// it is not among `segments`.
    Remove { path: PathBuf, file_len: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub segments: Vec<RecoveredSegment>,
    pub torn: Option<TornTail>,
}

#[derive(Debug)]
pub enum RecoverError {
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::Corrupt {
                path,
                offset,
                reason,
            } => write!(f, "{}: at byte {offset}: {reason}", path.display()),
            RecoverError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

fn corrupt(path: &Path, offset: usize, reason: String) -> RecoverError {
    RecoverError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

fn map_whole(path: &Path) -> Result<Mapping, RecoverError> {
    File::open(path)
        .and_then(|f| Mapping::of(&f))
        .map_err(|error| RecoverError::Io {
            path: path.to_path_buf(),
            error,
        })
}

/// Checks the segments of a log (`files` sorted by their name's LSN) and says what to cut.
/// Reads only; never changes a file.
pub fn recover(files: &[SegmentFile]) -> Result<Recovery, RecoverError> {
    let mut segments: Vec<RecoveredSegment> = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        let newest = index + 1 == files.len();
        let mapping = map_whole(&file.path)?;
        let data = mapping.bytes();
        let header = match SegmentHeader::decode(data) {
            Ok(header) => header,
            Err(HeaderProblem::Short) if newest => {
                let torn = TornTail::Remove {
                    path: file.path.clone(),
                    file_len: data.len() as u64,
                };
                return Ok(Recovery {
                    segments,
                    torn: Some(torn),
                });
            }
            Err(problem) => return Err(corrupt(&file.path, 0, problem.to_string())),
        };
        check_header_place(file, &header, segments.last())?;
        let scan = scan_records(data, &header);
        let torn = match scan.failure {
            None => None,
            Some(f) if newest && !f.valid_record_follows => Some(TornTail::Cut {
                path: file.path.clone(),
                at: f.offset as u64,
                file_len: data.len() as u64,
            }),
            Some(f) => return Err(corrupt(&file.path, f.offset, describe(&f, newest))),
        };
        segments.push(RecoveredSegment {
            path: file.path.clone(),
            first_lsn: header.first_lsn,
            salt: header.salt,
            records: scan.records,
            end: scan.end as u64,
            file_len: data.len() as u64,
        });
        if torn.is_some() {
            return Ok(Recovery { segments, torn });
        }
    }
    Ok(Recovery {
        segments,
        torn: None,
    })
}

fn describe(failure: &ScanFailure, newest: bool) -> String {
    let why = match (failure.problem, newest) {
        (RecordProblem::WrongLsn { .. }, _) => "",
        (_, false) => " in a segment older than the newest (not a torn tail)",
        (_, true) => " and a valid record follows it (not a torn tail)",
    };
    format!("{}{why}", failure.problem)
}

/// The header must carry the LSN its file is named by, and continue the previous segment.
fn check_header_place(
    file: &SegmentFile,
    header: &SegmentHeader,
    previous: Option<&RecoveredSegment>,
) -> Result<(), RecoverError> {
    if header.first_lsn != file.name_lsn {
        let reason = format!(
            "segment header says first LSN {} but the file is named for LSN {}",
            header.first_lsn, file.name_lsn
        );
        return Err(corrupt(&file.path, 16, reason));
    }
    if let Some(prev) = previous {
        let due = prev.first_lsn + prev.records;
        if header.first_lsn != due {
            let reason = format!(
                "segment starts at LSN {} but the previous segment ends before LSN {due} \
                 (a gap or overlap in the LSNs)",
                header.first_lsn
            );
            return Err(corrupt(&file.path, 16, reason));
        }
    }
    Ok(())
}

/// Records of a log read back in LSN order, from `from_lsn` up to `until_lsn` inclusive,
/// every one checked.
///
/// The files are opened when the replay starts, so a segment deleted meanwhile (by
/// `truncate_before`) is still read whole.
pub struct Replay {
    files: std::vec::IntoIter<(PathBuf, File, u64)>,
    data: Mapping,
    path: PathBuf,
    seed: u32,
    at: usize,
    next_lsn: u64,
    from_lsn: u64,
    until_lsn: u64,
}

impl Replay {
    /// `segments`: (path, first LSN) of the segments to read, in order.
    pub fn open(segments: &[(PathBuf, u64)], from_lsn: u64, until_lsn: u64) -> io::Result<Self> {
        let mut files = Vec::with_capacity(segments.len());
        for (path, first_lsn) in segments {
            files.push((path.clone(), File::open(path)?, *first_lsn));
        }
        Ok(Self {
            files: files.into_iter(),
            data: Mapping::empty(),
            path: PathBuf::new(),
            seed: 0,
            at: 0,
            next_lsn: 0,
            from_lsn,
            until_lsn,
        })
    }

    /// The next record as (LSN, payload), `Ok(None)` past `until_lsn`.
    pub fn next_record(&mut self) -> Result<Option<(u64, &[u8])>, RecoverError> {
        loop {
            if self.next_lsn > self.until_lsn {
                return Ok(None);
            }
            if self.at == 0 || self.at == self.data.len() {
                if !self.load_next_segment()? {
                    return self.ended_early();
                }
                continue;
            }
            let lsn = self.next_lsn;
            match read_record(self.data.bytes(), self.at, self.seed, lsn) {
                Ok(Some((_, range))) => {
                    self.at = range.end;
                    self.next_lsn += 1;
                    if lsn >= self.from_lsn {
                        return Ok(Some((lsn, &self.data.bytes()[range])));
                    }
                }
                Ok(None) => unreachable!("checked above: not at the end"),
                Err(problem) => return Err(corrupt(&self.path, self.at, problem.to_string())),
            }
        }
    }

    /// The files end before `until_lsn`: records the log counted as durable are missing.
    fn ended_early<T>(&self) -> Result<Option<T>, RecoverError> {
        if self.next_lsn == 0 {
            return Ok(None); // nothing to read at all
        }
        let reason = format!(
            "the log ends before LSN {}, which was durable when the replay started",
            self.next_lsn
        );
        Err(corrupt(&self.path, self.data.len(), reason))
    }

    /// Whether the next record needs the next segment read first (`load_next_segment`).
    pub fn wants_segment(&self) -> bool {
        self.next_lsn <= self.until_lsn && (self.at == 0 || self.at == self.data.len())
    }

    /// Reads the next segment; false when there is none.
    pub fn load_next_segment(&mut self) -> Result<bool, RecoverError> {
        let Some((path, file, first_lsn)) = self.files.next() else {
            return Ok(false);
        };
        self.data = Mapping::of(&file).map_err(|error| RecoverError::Io {
            path: path.clone(),
            error,
        })?;
        let header = SegmentHeader::decode(self.data.bytes())
            .map_err(|problem| corrupt(&path, 0, problem.to_string()))?;
        if header.first_lsn != first_lsn || (self.next_lsn != 0 && first_lsn != self.next_lsn) {
            let reason = format!("segment header says first LSN {}", header.first_lsn);
            return Err(corrupt(&path, 16, reason));
        }
        self.path = path;
        self.seed = header.record_seed();
        self.at = SEGMENT_HEADER_LEN;
        self.next_lsn = first_lsn;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::frame_record;
    use super::*;

    fn segment(first_lsn: u64, salt: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let header = SegmentHeader { first_lsn, salt };
        let mut out = header.encode().to_vec();
        for (i, p) in payloads.iter().enumerate() {
            frame_record(&mut out, header.record_seed(), first_lsn + i as u64, p);
        }
        out
    }

    fn header_of(data: &[u8]) -> SegmentHeader {
        SegmentHeader::decode(data).unwrap()
    }

    #[test]
    fn a_cut_at_every_byte_leaves_exactly_the_whole_records_before_it() {
        let full = segment(1, 9, &[b"alpha", b"", b"gamma-gamma"]);
        let ends = [32 + 21, 32 + 21 + 16, full.len()];
        for cut in SEGMENT_HEADER_LEN..=full.len() {
            let scan = scan_records(&full[..cut], &header_of(&full));
            let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
            assert_eq!(scan.records, whole, "cut at {cut}");
            match scan.failure {
                None => assert_eq!(scan.end, cut),
                Some(f) => {
                    assert!(!f.valid_record_follows, "cut at {cut}");
                    assert_eq!(f.offset, scan.end);
                }
            }
        }
    }

    #[test]
    fn a_flipped_bit_before_valid_records_is_not_a_torn_tail() {
        let clean = segment(1, 9, &[b"alpha", b"beta", b"gamma"]);
        for at in 32..(32 + 21) {
            let mut bad = clean.clone();
            bad[at] ^= 1;
            let scan = scan_records(&bad, &header_of(&bad));
            let f = scan.failure.expect("flip accepted");
            assert_eq!(f.offset, 32, "flip at {at}");
            assert!(f.valid_record_follows, "flip at {at} looks torn");
        }
        // A flip in the last record is followed by nothing valid: a torn tail.
        let mut last = clean.clone();
        let n = last.len();
        last[n - 1] ^= 1;
        let f = scan_records(&last, &header_of(&last)).failure.unwrap();
        assert!(!f.valid_record_follows);
    }

    #[test]
    fn stale_records_of_another_salt_and_zeros_never_validate() {
        let mut data = segment(1, 1, &[b"new"]);
        let stale = segment(1, 2, &[b"old", b"older"]);
        data.extend_from_slice(&stale[data.len()..]);
        data.extend_from_slice(&[0u8; 64]);
        let scan = scan_records(&data, &header_of(&data));
        assert_eq!(scan.records, 1);
        assert!(!scan.failure.unwrap().valid_record_follows);
    }

    fn write_log(dir: &Path, segments: &[Vec<u8>]) -> Vec<SegmentFile> {
        std::fs::create_dir_all(dir).unwrap();
        segments
            .iter()
            .map(|data| {
                let lsn = header_of(data).first_lsn;
                let path = dir.join(format!("{lsn:020}.wal"));
                std::fs::write(&path, data).unwrap();
                SegmentFile {
                    path,
                    name_lsn: lsn,
                }
            })
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wal-scan-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn recovery_cuts_only_the_newest_segment_and_reports_older_damage() {
        let dir = temp_dir("recover");
        let a = segment(1, 1, &[b"a1", b"a2"]);
        let mut b = segment(3, 2, &[b"b3", b"b4"]);
        b.truncate(b.len() - 1);
        let files = write_log(&dir, &[a.clone(), b.clone()]);
        let rec = recover(&files).unwrap();
        assert_eq!(rec.segments.len(), 2);
        assert_eq!(rec.segments[1].records, 1);
        let cut_at = 32 + 18;
        assert_eq!(
            rec.torn,
            Some(TornTail::Cut {
                path: files[1].path.clone(),
                at: cut_at,
                file_len: b.len() as u64
            })
        );
        // The same damage in the older segment is corruption.
        let mut a_bad = a.clone();
        let n = a_bad.len();
        a_bad[n - 1] ^= 4;
        let files = write_log(&dir, &[a_bad, segment(3, 2, &[b"b3"])]);
        match recover(&files) {
            Err(RecoverError::Corrupt { path, offset, .. }) => {
                assert_eq!((path, offset), (files[0].path.clone(), 32 + 18));
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recovery_refuses_gaps_and_misnamed_segments_and_removes_a_short_newest() {
        let dir = temp_dir("gaps");
        let files = write_log(&dir, &[segment(1, 1, &[b"x"]), segment(3, 2, &[b"y"])]);
        assert!(matches!(
            recover(&files),
            Err(RecoverError::Corrupt { offset: 16, .. })
        ));
        let mut files = write_log(&dir, &[segment(1, 1, &[b"x"])]);
        files[0].name_lsn = 7;
        assert!(matches!(recover(&files), Err(RecoverError::Corrupt { .. })));
        let mut files = write_log(&dir, &[segment(1, 1, &[b"x"]), segment(2, 2, &[])]);
        std::fs::write(&files[1].path, &segment(2, 2, &[])[..20]).unwrap();
        files[1].name_lsn = 2;
        let rec = recover(&files).unwrap();
        assert_eq!(rec.segments.len(), 1);
        assert!(matches!(
            rec.torn,
            Some(TornTail::Remove { file_len: 20, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_reads_across_segments_within_bounds() {
        let dir = temp_dir("replay");
        let files = write_log(
            &dir,
            &[
                segment(1, 1, &[b"1", b"2"]),
                segment(3, 5, &[b"3", b"4", b"5"]),
            ],
        );
        let list: Vec<_> = files.iter().map(|f| (f.path.clone(), f.name_lsn)).collect();
        let mut replay = Replay::open(&list, 2, 4).unwrap();
        let mut got = Vec::new();
        while let Some((lsn, payload)) = replay.next_record().unwrap() {
            got.push((lsn, payload.to_vec()));
        }
        let want: Vec<(u64, Vec<u8>)> = (2..=4).map(|l| (l, l.to_string().into_bytes())).collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
