//! The backend's tests: ordering, combining, room and files, through `waiters::Shared` as
//! callers use it. They need a kernel with io_uring (the test machine has one).

use super::*;
use crate::config::{IoUringConfig, RingMode};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::waiters::{Shared, WaitError};
use std::sync::Arc;

/// The backend as callers use it (behind `Shared`), with the old single-caller calls.
struct B(Arc<Shared>);

impl B {
    fn with<R>(&self, f: impl FnOnce(&mut UringBackend) -> R) -> R {
        self.0.access().run(|b| Ok(f(b))).unwrap()
    }
    fn run<R>(
        &self,
        f: impl FnOnce(&mut UringBackend) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        match self.0.access().run(f) {
            Ok(v) => Ok(v),
            Err(WaitError::Backend(e)) => Err(e),
            Err(e) => panic!("{e:?}"),
        }
    }
    fn register_fd(&self, fd: RawFd) -> Result<Handle, BackendError> {
        self.run(|b| b.register_fd(fd))
    }
    fn submit_append(&self, h: Handle, data: &[u8]) -> Result<u64, BackendError> {
        self.run(|b| b.submit_append(h, data))
    }
    fn submit_write(&self, h: Handle, data: &[u8], at: u64) -> Result<u64, BackendError> {
        self.run(|b| b.submit_write(h, data, at))
    }
    fn submit_datasync(&self, h: Handle) -> Result<u64, BackendError> {
        self.run(|b| b.submit_datasync(h))
    }
    fn check_handle(&self, h: Handle) -> Result<(), BackendError> {
        self.run(|b| b.check_handle(h))
    }
    fn flush(&self) -> Result<usize, BackendError> {
        self.run(|b| Ok(b.flush()?))
    }
    fn deregister_fd(&self, h: Handle) -> Result<(), WaitError> {
        self.0.deregister_fd(h)
    }
    fn make_room(&self, len: usize) -> Result<(), WaitError> {
        self.0.make_room(len, false)
    }
    fn close(&self) -> Result<(), WaitError> {
        let deadlines = crate::waiters::CloseDeadlines::starting_now(None);
        loop {
            match self.0.close(deadlines) {
                Err(WaitError::Interrupted) => continue,
                other => return other,
            }
        }
    }
    fn wait(
        &self,
        min: usize,
        timeout: Option<Duration>,
        out: &mut Vec<(u64, i64)>,
    ) -> Result<(), WaitError> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut got = Vec::new();
        let result = self.0.wait(min, deadline, &mut got);
        out.extend(got.into_iter().map(|c| (c.token, c.result)));
        result
    }
}

fn backend(config: IoUringConfig) -> B {
    B(Shared::new(
        UringBackend::new(0, &config, 7).expect("io_uring is available on the test machine"),
    ))
}

fn small_standard() -> IoUringConfig {
    IoUringConfig {
        mode: RingMode::Standard,
        ring_entries: 8,
        buffer_size: 4096,
        buffer_count: 8,
        ..IoUringConfig::default()
    }
}

fn temp_file(name: &str) -> (std::path::PathBuf, File) {
    let dir = std::env::temp_dir().join(format!("storage_io_rs_{}_{name}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&dir)
        .unwrap();
    (dir, file)
}

fn drain(b: &B) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    b.wait(usize::MAX, None, &mut out).unwrap();
    out
}

/// Polls (never runs work in the caller, as an event loop does) until `n` completions.
fn poll_until(b: &B, n: usize) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut got = Vec::new();
        b.run(|b| Ok(b.poll(&mut got, true)?)).unwrap();
        out.extend(got.into_iter().map(|c| (c.token, c.result)));
    }
    out
}

/// Submits, waiting for buffers as the Python layer does.
fn append(b: &B, h: Handle, data: &[u8]) -> u64 {
    loop {
        match b.submit_append(h, data) {
            Err(BackendError::NoRoom) => b.make_room(data.len()).unwrap(),
            other => return other.unwrap(),
        }
    }
}

#[test]
fn a_registered_eventfd_is_signalled_by_a_completion() {
    let b = backend(small_standard());
    let (path, file) = temp_file("eventfd");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    // SAFETY: creates a new descriptor; no memory of ours is involved.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(raw >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `raw` was just created and nothing else owns it.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let raw_eventfd = eventfd.as_raw_fd();
    b.run(|b| Ok(b.register_eventfd(raw_eventfd)?)).unwrap();
    let token = append(&b, h, b"woken");
    b.flush().unwrap();
    let mut counter = [0u8; 8];
    // A blocking read: returns once the kernel has posted the write's CQE.
    File::from(eventfd.try_clone().unwrap())
        .read_exact(&mut counter)
        .unwrap();
    assert!(u64::from_ne_bytes(counter) >= 1);
    let done = drain(&b);
    assert_eq!(done, vec![(token, 5)]);
    b.run(|b| Ok(b.unregister_eventfd()?)).unwrap();
    assert!(
        b.run(|b| Ok(b.unregister_eventfd()?)).is_err(),
        "nothing left to unregister"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn tokens_are_unique_across_kinds_and_each_completes_once() {
    let b = backend(small_standard());
    let (path, file) = temp_file("tokens");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let mut tokens = Vec::new();
    for i in 0..200 {
        tokens.push(append(&b, h, &[i as u8; 100]));
        if i % 7 == 0 {
            tokens.push(b.submit_datasync(h).unwrap());
        }
    }
    let mut done: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
    let mut sorted = tokens.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), tokens.len(), "a token was handed out twice");
    done.sort_unstable();
    assert_eq!(done, sorted, "every token completes exactly once");
    assert_eq!(b.with(|b| b.pending_count()), 0);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn long_runs_of_appends_are_flushed_and_close_waits_for_the_flush() {
    let b = backend(IoUringConfig {
        background_flush_bytes: 8192,
        ..small_standard()
    });
    let (path, file) = temp_file("background_flush");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    // 100-byte appends: completed ranges end inside a page, which must stay out.
    for i in 0..1000 {
        append(&b, h, &[i as u8; 100]);
        if i % 100 == 99 {
            drain(&b);
        }
    }
    assert!(b.with(|b| b.metrics()).background_flushes >= 1);
    b.close().unwrap(); // returns only once the background flushes are done
    let mut got = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut got).unwrap();
    let want: Vec<u8> = (0..1000).flat_map(|i| [i as u8; 100]).collect();
    assert_eq!(got, want);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_waiting_caller_never_writes_a_batch_ahead_of_an_earlier_write() {
    let b = backend(small_standard());
    let (path, file) = temp_file("caller_order");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    b.submit_write(h, &[1; 100], 0).unwrap();
    // Not contiguous with the first: the first goes to the ring, this one opens a batch.
    b.submit_write(h, &[2; 100], 0).unwrap();
    assert!(
        b.with(|b| b.take_caller_work(true).is_none()),
        "the first write is still in flight: a pwrite now could land before it"
    );
    assert_eq!(drain(&b).len(), 2);
    let mut got = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, vec![2; 100]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn datasync_completes_after_every_earlier_write_of_its_file() {
    let b = backend(IoUringConfig {
        buffer_count: 64,
        ..small_standard()
    });
    let (path, file) = temp_file("ordering");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    for round in 0..20 {
        let writes: Vec<u64> = (0..6)
            .map(|_| append(&b, h, &vec![round as u8; 20_000]))
            .collect();
        let sync = b.submit_datasync(h).unwrap();
        let order: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
        let sync_at = order.iter().position(|&t| t == sync).unwrap();
        for w in writes {
            let at = order.iter().position(|&t| t == w).unwrap();
            assert!(
                at < sync_at,
                "write {w} completed after the datasync {sync}"
            );
        }
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn held_datasync_is_issued_only_when_its_writes_are_done() {
    let b = backend(small_standard());
    let (path, file) = temp_file("held");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    append(&b, h, b"abc");
    b.submit_datasync(h).unwrap();
    assert_eq!(
        b.with(|b| b.held_count),
        1,
        "a datasync behind an unfinished write must be held back"
    );
    assert_eq!(
        b.with(|b| b.manager.in_flight()),
        0,
        "the closed batch waits for a flush or a wait"
    );
    b.flush().unwrap();
    assert_eq!(
        b.with(|b| b.manager.in_flight()),
        1,
        "only the write may be in the ring"
    );
    drain(&b);
    assert_eq!(b.with(|b| b.held_count), 0);
    // No write in flight now: the next datasync goes straight to the ring.
    b.submit_datasync(h).unwrap();
    assert_eq!(b.with(|b| b.held_count), 0);
    drain(&b);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_waiting_caller_writes_and_syncs_a_closed_batch_itself() {
    let b = backend(small_standard());
    let (path, file) = temp_file("in_caller");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let writes = [append(&b, h, b"one "), append(&b, h, b"two")];
    let sync = b.submit_datasync(h).unwrap();
    let mut out = Vec::new();
    b.wait(3, None, &mut out).unwrap();
    assert_eq!(out, vec![(writes[0], 4), (writes[1], 3), (sync, 0)]);
    assert_eq!(b.with(|b| b.work_in_caller()), (1, 1));
    assert_eq!(
        b.with(|b| b.manager.metrics()).submitted,
        0,
        "nothing went through the ring"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"one two");
    // With a short timeout the same work goes through the ring instead.
    let late = append(&b, h, b"!");
    let sync = b.submit_datasync(h).unwrap();
    let mut out = Vec::new();
    while out.len() < 2 {
        b.wait(2, Some(Duration::from_millis(100)), &mut out)
            .unwrap();
    }
    assert_eq!(out, vec![(late, 1), (sync, 0)]);
    assert_eq!(b.with(|b| b.work_in_caller()), (1, 1));
    assert_eq!(b.with(|b| b.manager.metrics()).submitted, 2);
    assert_eq!(std::fs::read(&path).unwrap(), b"one two!");
    assert_eq!(
        b.with(|b| b.free_buffers_for_test()),
        8,
        "every buffer came back"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn appends_land_back_to_back_and_large_writes_split_under_one_token() {
    let b = backend(small_standard());
    let (path, mut file) = temp_file("appends");
    std::io::Write::write_all(&mut file, b"head").unwrap();
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let mut expected = b"head".to_vec();
    let mut tokens = Vec::new();
    for i in 0..50usize {
        // 0 bytes up to five buffers' worth: exercises splitting and the empty write.
        let chunk = vec![(i % 251) as u8; (i * 977) % (5 * 4096)];
        tokens.push((append(&b, h, &chunk), chunk.len()));
        expected.extend_from_slice(&chunk);
    }
    let results: HashMap<u64, i64> = drain(&b).into_iter().collect();
    for (token, len) in tokens {
        assert_eq!(
            results[&token], len as i64,
            "token {token} reported a partial length"
        );
    }
    let mut actual = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut actual).unwrap();
    assert_eq!(actual, expected);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_write_larger_than_the_whole_pool_travels_from_its_own_copy() {
    let b = backend(small_standard());
    let (path, file) = temp_file("huge");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let token = b.submit_write(h, &data, 10).unwrap();
    let done = drain(&b);
    assert_eq!(done, vec![(token, data.len() as i64)]);
    let actual = std::fs::read(&path).unwrap();
    assert_eq!(&actual[10..], &data[..]);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn deregister_keeps_other_files_completions() {
    let b = backend(small_standard());
    let (path_a, a) = temp_file("dereg_a");
    let (path_b, f) = temp_file("dereg_b");
    let ha = b.register_fd(a.as_raw_fd()).unwrap();
    let hb = b.register_fd(f.as_raw_fd()).unwrap();
    let ta = append(&b, ha, b"aaaa");
    let tb = append(&b, hb, b"bbbb");
    b.deregister_fd(ha).unwrap();
    assert!(matches!(b.submit_datasync(ha), Err(BackendError::BadFd(_))));
    let mut tokens: Vec<u64> = drain(&b).iter().map(|c| c.0).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, vec![ta, tb]);
    // The slot is reused with a new generation; the old handle stays dead.
    let hc = b.register_fd(a.as_raw_fd()).unwrap();
    assert_eq!(hc.slot, ha.slot);
    assert_ne!(hc.generation, ha.generation);
    assert!(matches!(b.check_handle(ha), Err(BackendError::BadFd(_))));
    std::fs::remove_file(path_a).unwrap();
    std::fs::remove_file(path_b).unwrap();
}

#[test]
fn full_completion_queue_loses_nothing() {
    let b = backend(IoUringConfig {
        ring_entries: 1,
        buffer_count: 256,
        ..small_standard()
    });
    let (path, file) = temp_file("overflow");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let tokens: Vec<u64> = (0..256).map(|_| append(&b, h, b"x")).collect();
    b.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let the kernel post more CQEs than fit
    let done = drain(&b);
    assert_eq!(done.len(), tokens.len());
    assert!(done.iter().all(|&(_, r)| r == 1));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn handles_of_another_instance_are_refused() {
    let b = backend(small_standard());
    let (path, file) = temp_file("foreign");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let foreign = Handle {
        owner: h.owner + 1,
        ..h
    };
    assert!(matches!(
        b.submit_datasync(foreign),
        Err(BackendError::BadFd(_))
    ));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn datasyncs_issued_together_share_one_fdatasync_in_the_ring() {
    let b = backend(small_standard());
    let (path, file) = temp_file("shared_sync_ring");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let write = append(&b, h, b"group");
    b.flush().unwrap();
    poll_until(&b, 1);
    // Nothing of the file in flight: each goes to the ring at once, the first as an SQE.
    let syncs: Vec<u64> = (0..32).map(|_| b.submit_datasync(h).unwrap()).collect();
    let mut done = poll_until(&b, 32);
    done.sort_unstable();
    assert_eq!(done, syncs.iter().map(|&t| (t, 0)).collect::<Vec<_>>());
    assert_eq!(b.with(|b| b.datasyncs_joined()), 31);
    assert_eq!(
        b.with(|b| b.manager.metrics()).submitted,
        2,
        "the write {write} and one fdatasync"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn datasyncs_released_to_a_waiting_caller_share_one_fdatasync() {
    let b = backend(small_standard());
    let (path, file) = temp_file("shared_sync_caller");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let write = append(&b, h, b"group");
    let syncs: Vec<u64> = (0..32).map(|_| b.submit_datasync(h).unwrap()).collect();
    let mut out = Vec::new();
    b.wait(33, None, &mut out).unwrap();
    let mut expected = vec![(write, 5)];
    expected.extend(syncs.iter().map(|&t| (t, 0)));
    assert_eq!(out, expected);
    assert_eq!(
        b.with(|b| b.work_in_caller()),
        (1, 1),
        "one fdatasync, one pwrite"
    );
    assert_eq!(b.with(|b| b.datasyncs_joined()), 31);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_datasync_never_shares_an_fdatasync_the_kernel_has_taken() {
    let b = backend(small_standard());
    let (path, file) = temp_file("shared_sync_taken");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    // Nothing of this instance is written in between: a write made some other way (a
    // pwrite, another instance) may have been, after the first fdatasync started.
    let first = b.submit_datasync(h).unwrap();
    let joined = b.submit_datasync(h).unwrap();
    b.flush().unwrap();
    // The kernel has it: these wait for it to finish, then go as one fdatasync.
    let later: Vec<u64> = (0..3).map(|_| b.submit_datasync(h).unwrap()).collect();
    assert_eq!(b.with(|b| b.manager.in_flight()), 1);
    let mut done = poll_until(&b, 5);
    done.sort_unstable();
    let mut expected = vec![(first, 0), (joined, 0)];
    expected.extend(later.iter().map(|&t| (t, 0)));
    assert_eq!(done, expected);
    assert_eq!(b.with(|b| b.datasyncs_joined()), 3);
    assert_eq!(b.with(|b| b.manager.metrics()).submitted, 2);
    // And across writes: each round's second datasync comes after the poll that sent the
    // first to the kernel.
    for round in 0..20u8 {
        let first = append(&b, h, &[round; 100]);
        let first_sync = b.submit_datasync(h).unwrap();
        b.flush().unwrap();
        assert_eq!(poll_until(&b, 1), vec![(first, 100)]);
        let second = append(&b, h, &[round; 50]);
        let second_sync = b.submit_datasync(h).unwrap();
        let mut done = poll_until(&b, 3);
        done.sort_unstable();
        assert_eq!(done, vec![(first_sync, 0), (second, 50), (second_sync, 0)]);
    }
    assert_eq!(b.with(|b| b.datasyncs_joined()), 3);
    assert_eq!(b.with(|b| b.manager.metrics()).submitted, 82);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn nowait_submissions_past_the_pool_wait_in_order_and_close_writes_them() {
    let b = backend(small_standard());
    let (path, file) = temp_file("nowait_queue");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    // 64 appends of a whole buffer each, into a pool of 8: most must wait in the queue.
    let records: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 4096]).collect();
    let mut tokens = Vec::new();
    for data in &records {
        let request = Request::Write {
            parts: &[data],
            offset: None,
        };
        tokens.push(b.run(|b| b.submit_nowait(h, &request)).unwrap());
    }
    assert!(
        b.with(|b| b.queued_len()) > 0,
        "the pool was full: some were queued"
    );
    let sync = b.run(|b| b.submit_nowait(h, &Request::Datasync)).unwrap();
    let mut sorted = tokens.clone();
    sorted.push(sync);
    sorted.dedup();
    assert_eq!(sorted.len(), 65, "every call got a token of its own");
    // Nobody polls: close alone must write everything, in call order.
    b.close().unwrap();
    let mut written = Vec::new();
    File::open(&path)
        .unwrap()
        .read_to_end(&mut written)
        .unwrap();
    assert_eq!(written, records.concat());
    let _ = std::fs::remove_file(path);
}

#[test]
fn nowait_completions_go_only_to_their_own_taker() {
    let b = backend(small_standard());
    let (path, file) = temp_file("nowait_takers");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    let plain = append(&b, h, b"plain");
    let request = Request::Write {
        parts: &[b"nowait"],
        offset: None,
    };
    let nowait = b.run(|b| b.submit_nowait(h, &request)).unwrap();
    let mut taken = Vec::new();
    while taken.is_empty() {
        let mut got = Vec::new();
        b.0.access().take_nowait(&mut got).unwrap();
        taken.extend(got.into_iter().map(|c| (c.token, c.result)));
    }
    assert_eq!(taken, vec![(nowait, 6)]);
    assert_eq!(
        poll_until(&b, 1),
        vec![(plain, 5)],
        "the plain one stayed for poll"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_plain_submit_waits_behind_queued_nowait_ones() {
    let b = backend(small_standard());
    let (path, file) = temp_file("nowait_then_plain");
    let h = b.register_fd(file.as_raw_fd()).unwrap();
    for i in 0..16u8 {
        let data = [i; 4096];
        let request = Request::Write {
            parts: &[&data],
            offset: None,
        };
        b.run(|b| b.submit_nowait(h, &request)).unwrap();
    }
    assert!(b.with(|b| b.queued_len()) > 0);
    assert!(matches!(
        b.submit_append(h, b"late"),
        Err(BackendError::NoRoom)
    ));
    append(&b, h, b"late");
    b.close().unwrap();
    let mut written = Vec::new();
    File::open(&path)
        .unwrap()
        .read_to_end(&mut written)
        .unwrap();
    assert_eq!(written.len(), 16 * 4096 + 4);
    assert_eq!(
        &written[16 * 4096..],
        b"late",
        "the plain append came after the queue"
    );
    let _ = std::fs::remove_file(path);
}
