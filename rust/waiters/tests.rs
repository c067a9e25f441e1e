//! Tests of waiting on a shared instance, single-threaded where the property allows.

use super::*;
use crate::backend::{ClaimError, Completion, UringBackend};
use crate::config::{IoUringConfig, RingMode};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn shared() -> Arc<Shared> {
    let config = IoUringConfig {
        mode: RingMode::Standard,
        ring_entries: 8,
        buffer_size: 4096,
        buffer_count: 8,
        ..IoUringConfig::default()
    };
    Shared::new(UringBackend::new(0, &config, 9).unwrap())
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success, checked below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are ours.
    unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

// Threads waiting on one instance are tested from Python (tests/test_shared_instances.py,
// tests/test_uring_waiters.py): under valgrind, which the CI runs these tests in, a
// thread asleep in io_uring_enter holds valgrind's lock and no other thread runs.

#[test]
fn a_probe_times_out_without_losing_its_tokens_and_close_refuses_later_calls() {
    let s = shared();
    let (reader, writer) = pipe();
    let r = s
        .access()
        .run(|b| b.register_fd(reader.as_raw_fd()))
        .unwrap();
    let w = s
        .access()
        .run(|b| b.register_fd(writer.as_raw_fd()))
        .unwrap();
    let read = s.access().run(|b| b.submit_read(r, 3, 0)).unwrap();
    s.claim(&[read]).unwrap();
    assert!(matches!(
        s.claim(&[read]),
        Err(WaitError::Claim(ClaimError::AlreadyClaimed(_)))
    ));
    assert!(matches!(
        s.wait_claimed(&[read], Some(Instant::now())),
        Err(WaitError::TimedOut)
    ));
    let write = s.access().run(|b| b.submit_append(w, b"abc")).unwrap();
    let mut out = Vec::new();
    while !out.iter().any(|c: &Completion| c.token == write) {
        s.wait(1, Some(Instant::now() + Duration::from_secs(5)), &mut out)
            .unwrap();
    }
    assert!(
        out.iter().all(|c| c.token != read),
        "a claimed token went to wait()"
    );
    let got = loop {
        match s.wait_claimed(&[read], Some(Instant::now() + Duration::from_secs(5))) {
            Err(WaitError::Interrupted) => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data.as_deref(), Some(&b"abc"[..]));
    close(&s);
    assert!(s.is_closed());
    assert!(matches!(
        s.access().run(|b| b.submit_append(w, b"x")),
        Err(WaitError::Closed)
    ));
    close(&s); // twice is harmless
}

fn close(s: &Shared) {
    let deadlines = super::CloseDeadlines::starting_now(None);
    loop {
        match s.close(deadlines) {
            Err(WaitError::Interrupted) => continue,
            other => return other.unwrap(),
        }
    }
}

#[test]
fn close_cancels_a_write_to_a_pipe_nobody_reads_at_its_deadline() {
    let s = shared();
    let (reader, writer) = pipe();
    let w = s
        .access()
        .run(|b| b.register_fd(writer.as_raw_fd()))
        .unwrap();
    let stuck = vec![1u8; 1 << 20];
    s.access().run(|b| b.submit_append(w, &stuck)).unwrap();
    s.access()
        .run(|b| b.submit_append(w, b"queued behind"))
        .unwrap();
    let deadlines = CloseDeadlines::starting_now(Some(Instant::now() + Duration::from_millis(50)));
    loop {
        match s.close(deadlines) {
            Err(WaitError::Interrupted) => continue,
            other => break other.unwrap(),
        }
    }
    assert!(s.is_closed());
    drop(writer);
    // What reached the pipe is a prefix of the stuck write and nothing after it: the rest
    // was cancelled, and the write queued behind it never went.
    let mut got = Vec::new();
    use std::io::Read;
    (&reader).read_to_end(&mut got).unwrap();
    assert!(
        got.len() < stuck.len(),
        "all {} bytes went through",
        got.len()
    );
    assert!(got.iter().all(|&b| b == 1));
}
