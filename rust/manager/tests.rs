//! The manager's own tests: tokens, the pending table and reaping, on a live ring (the test
//! machine has io_uring), without the backend above it.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::pending::{written_prefix, Part, Source};
use super::tokens::{PART_BITS, WAKE_TOKEN};
use super::{Done, Finished, RingManager, TokenMap};
use crate::config::{IoUringConfig, RingMode};

fn small_standard() -> IoUringConfig {
    IoUringConfig {
        mode: RingMode::Standard,
        ring_entries: 8,
        buffer_size: 4096,
        buffer_count: 4,
        max_files: 2,
        ..IoUringConfig::default()
    }
}

fn manager() -> RingManager {
    RingManager::new(0, &small_standard()).expect("io_uring is available on the test machine")
}

/// A fresh file in the temp directory, in slot 0 of `m`'s fixed-file table.
fn file_in_slot_0(m: &RingManager, name: &str, read_only: bool) -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!("storage_io_mgr_{}_{name}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let file = File::options()
        .read(true)
        .write(!read_only)
        .open(&path)
        .unwrap();
    m.set_file(0, file.as_raw_fd()).unwrap();
    (path, file)
}

/// Flushes and reaps until nothing is in flight; every `Finished` in the order reaped.
fn run_to_completion(m: &mut RingManager) -> Vec<Finished> {
    let mut out = Vec::new();
    m.flush().unwrap();
    while m.in_flight() > 0 {
        m.wait_for_cqe(Some(Duration::from_secs(5))).unwrap();
        m.reap(&mut out);
    }
    out
}

#[test]
fn tokens_are_handed_out_in_sequence_from_one_and_never_twice() {
    let mut m = manager();
    assert_eq!(m.peek_token(), 1, "0 is the wake-up no-ops' token");
    assert_ne!(WAKE_TOKEN, m.peek_token());
    let first = m.reserve_token();
    assert_eq!(first, 1);
    assert_eq!(m.peek_token(), 2, "peek names the next reserve");
    let (path, _file) = file_in_slot_0(&m, "tokens", false);
    let write = m.submit_write(0, b"abc", 0, 9);
    let sync = m.submit_datasync(0, 0);
    assert_eq!((write, sync), (2, 3));
    assert_eq!(m.in_flight(), 2);
    let done = run_to_completion(&mut m);
    let mut tokens: Vec<u64> = done.iter().map(|f| f.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, vec![2, 3], "each operation finishes exactly once");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn token_map_keeps_every_sequential_token_apart() {
    let mut map = TokenMap::default();
    for token in 1..10_000u64 {
        map.insert(token, token * 2);
    }
    assert_eq!(map.len(), 9_999);
    assert!((1..10_000u64).all(|t| map[&t] == t * 2));
}

#[test]
fn a_write_over_several_buffers_finishes_once_with_its_whole_length() {
    let mut m = manager();
    let (path, mut file) = file_in_slot_0(&m, "parts", false);
    // Three buffers' worth: three parts (three SQEs) under one token.
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    assert_eq!(m.buffers_needed(data.len()), Some(4));
    let token = m.submit_write(0, &data, 0, 42);
    assert_eq!(
        m.free_buffers(),
        0,
        "every part holds a buffer until its CQE"
    );
    let done = run_to_completion(&mut m);
    assert_eq!(
        done,
        vec![Finished {
            token,
            result: data.len() as i64,
            file_slot: 0,
            done: Done::Write {
                offset: 0,
                len: data.len()
            },
            tag: 42,
            written: data.len(),
            data: None,
        }]
    );
    assert_eq!(
        m.free_buffers(),
        4,
        "the parts' buffers are back in the pool"
    );
    assert_eq!(m.metrics().bytes_written, data.len() as u64);
    let mut on_disk = Vec::new();
    file.read_to_end(&mut on_disk).unwrap();
    assert_eq!(on_disk, data);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_failed_write_reports_its_errno_and_returns_its_buffers() {
    let mut m = manager();
    let (path, _file) = file_in_slot_0(&m, "readonly", true);
    let token = m.submit_write(0, &[7u8; 5000], 0, 0);
    let done = run_to_completion(&mut m);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, token);
    assert_eq!(done[0].result, -i64::from(libc::EBADF));
    assert_eq!(done[0].written, 0);
    assert_eq!(m.metrics().failed, 1);
    assert_eq!(m.free_buffers(), 4);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_write_larger_than_the_pool_travels_from_a_private_copy_and_is_released() {
    let mut m = manager();
    let (path, _file) = file_in_slot_0(&m, "private", false);
    let data = vec![1u8; 5 * 4096];
    assert_eq!(m.buffers_needed(data.len()), None);
    m.submit_write(0, &data, 0, 0);
    assert_eq!(m.private_bytes(), data.len());
    assert_eq!(m.free_buffers(), 4, "no registered buffer is used");
    let done = run_to_completion(&mut m);
    assert_eq!(done[0].result, data.len() as i64);
    assert_eq!(m.private_bytes(), 0);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_read_hands_back_the_bytes_and_stops_at_the_end_of_the_file() {
    let mut m = manager();
    let (path, _file) = file_in_slot_0(&m, "read", false);
    std::fs::write(&path, b"hello, ring").unwrap();
    let token = m.reserve_token();
    m.submit_read(token, 0, 100, 7, true);
    let done = run_to_completion(&mut m);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].done, Done::Read);
    assert_eq!(done[0].result, 4);
    assert_eq!(done[0].data.as_deref(), Some(&b"ring"[..]));
    assert_eq!(m.free_buffers(), 4);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn wake_ups_of_a_sleeper_are_reaped_as_nobodys_operation() {
    let mut m = manager();
    m.wake_sleeper(2).unwrap();
    m.wait_for_cqes(2, Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    m.reap(&mut out);
    assert!(out.is_empty(), "a wake-up finishes nothing: {out:?}");
    assert_eq!(m.unreaped(), 0);
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn the_written_prefix_stops_at_the_first_part_not_wholly_written() {
    let part = |len, done| Part {
        source: Source::Owned(Box::new([])),
        offset: 0,
        len,
        done,
    };
    assert_eq!(written_prefix(&[]), 0);
    assert_eq!(written_prefix(&[part(10, 10), part(10, 10)]), 20);
    assert_eq!(
        written_prefix(&[part(10, 10), part(10, 4), part(10, 10)]),
        14
    );
    assert_eq!(written_prefix(&[part(10, 0), part(10, 10)]), 0);
}

#[test]
fn part_index_and_token_share_user_data_without_overlap() {
    let token = 0x1234_5678u64;
    let user_data = token << PART_BITS | 0xffff;
    assert_eq!(user_data >> PART_BITS, token);
    assert_eq!(user_data & ((1 << PART_BITS) - 1), 0xffff);
}

#[test]
fn entries_a_failed_enter_refused_are_taken_back_and_fail_with_its_errno() {
    let mut m = manager();
    let (path, _file) = file_in_slot_0(&m, "refused", false);
    let first = m.submit_write(0, b"first", 0, 1);
    let done = run_to_completion(&mut m);
    assert_eq!(done[0].token, first);
    // Queued (STANDARD: nothing reaches the kernel before an enter), then refused for good.
    let write = m.submit_write(0, b"never", 100, 2);
    let sync = m.submit_datasync(0, 0);
    assert_eq!(m.unsubmitted(), 2);
    m.refuse(&std::io::Error::from_raw_os_error(libc::EIO));
    assert_eq!(m.unsubmitted(), 0, "the queue is empty again");
    let mut out = Vec::new();
    m.reap(&mut out);
    let mut results: Vec<(u64, i64)> = out.iter().map(|f| (f.token, f.result)).collect();
    results.sort_unstable();
    assert_eq!(results, vec![(write, -i64::from(libc::EIO)), (sync, -5)]);
    assert_eq!(m.in_flight(), 0);
    assert_eq!(
        m.free_buffers(),
        4,
        "the refused write's buffer is back in the pool"
    );
    // The taken-back entries never reach the kernel: the next enter carries only new ones.
    let later = m.submit_write(0, b"later", 5, 3);
    let done = run_to_completion(&mut m);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, later);
    assert_eq!(std::fs::read(&path).unwrap(), b"firstlater");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_cancelled_stuck_pipe_write_completes_with_ecanceled_and_is_not_reissued() {
    let mut m = manager();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success, checked here.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    m.set_file(0, fds[1]).unwrap();
    // More than the pipe holds, with nobody reading: it can only wait.
    let data = vec![7u8; 1 << 20].into_boxed_slice();
    m.submit_owned(11, 0, data, super::STREAM_OFFSET, 0);
    m.flush().unwrap();
    let mut out = Vec::new();
    m.wait_for_cqe(Some(Duration::from_millis(200))).unwrap();
    m.reap(&mut out);
    assert!(out.is_empty(), "the write cannot finish: {out:?}");
    assert_eq!(m.cancel(|slot| slot == 0), 1);
    assert!(m.only_cancelled_in_flight());
    let done = run_to_completion(&mut m);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, -i64::from(libc::ECANCELED));
    assert_eq!(m.metrics().cancelled_reissued, 0);
    for fd in fds {
        // SAFETY: closing the pipe's descriptors made above.
        unsafe { libc::close(fd) };
    }
}
