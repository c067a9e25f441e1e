//! Building the ring: SQPOLL when asked and granted, STANDARD otherwise, and a reason a user
//! can act on when io_uring cannot be had at all.

use io_uring::IoUring;
use std::io;

use crate::config::{IoUringConfig, RingMode};

pub struct BuiltRing {
    pub ring: IoUring,
    pub mode: RingMode,
    /// Why the ring is not in the mode that was asked for, if it is not.
    pub fallback_reason: Option<String>,
}

/// io_uring cannot be set up here; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

/// The ring's mappings (its queues and SQE array) are not inherited by a child process
/// (MADV_DONTFORK): a mapping of the ring keeps the ring alive as its descriptor does, so a
/// child that kept them would keep the parent's ring, and its SQPOLL thread, alive after the
/// parent closed it. The descriptor a child inherits is closed by `crate::fork`.
pub fn build_ring(config: &IoUringConfig) -> Result<BuiltRing, Unavailable> {
    if config.mode == RingMode::Sqpoll {
        let mut builder = IoUring::builder();
        builder.dontfork();
        builder.setup_sqpoll(config.sqpoll_idle_ms);
        if let Some(cpu) = config.sqpoll_cpu {
            builder.setup_sqpoll_cpu(cpu);
        }
        match builder.build(config.ring_entries) {
            Ok(ring) => {
                return Ok(BuiltRing {
                    ring,
                    mode: RingMode::Sqpoll,
                    fallback_reason: None,
                });
            }
            Err(err) => {
                // The kernel may refuse the polling thread alone (no CAP_SYS_NICE on old
                // kernels, a cgroup without a CPU to give): a standard ring still works.
                let reason = format!("SQPOLL refused: {}", describe_setup_error(&err));
                let ring = build_standard(config)?;
                return Ok(BuiltRing {
                    ring,
                    mode: RingMode::Standard,
                    fallback_reason: Some(reason),
                });
            }
        }
    }
    Ok(BuiltRing {
        ring: build_standard(config)?,
        mode: RingMode::Standard,
        fallback_reason: None,
    })
}

fn build_standard(config: &IoUringConfig) -> Result<IoUring, Unavailable> {
    IoUring::builder()
        .dontfork()
        .build(config.ring_entries)
        .map_err(|err| {
            Unavailable(format!(
                "io_uring_setup failed: {}",
                describe_setup_error(&err)
            ))
        })
}

/// Names the likely cause of a failed io_uring system call, so the fallback reason is
/// useful.
pub fn describe_setup_error(err: &io::Error) -> String {
    let cause = match err.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".to_string(),
        Some(libc::EPERM) => match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            Ok(v) if v.trim() != "0" => {
                format!(
                    "io_uring is disabled by sysctl kernel.io_uring_disabled={} (EPERM)",
                    v.trim()
                )
            }
            _ => "the io_uring system call is not permitted here, e.g. blocked by a seccomp \
                  filter or missing privilege (EPERM)"
                .to_string(),
        },
        Some(libc::ENOMEM) => {
            "not enough lockable memory for the ring (ENOMEM; see RLIMIT_MEMLOCK)".to_string()
        }
        _ => err.to_string(),
    };
    cause
}

/// The registered buffers count against RLIMIT_MEMLOCK unless the process may lock memory
/// without limit; say so when registering them fails for that reason.
pub fn describe_buffer_registration_error(err: &io::Error, bytes: usize) -> String {
    match err.raw_os_error() {
        Some(libc::ENOMEM) => format!(
            "registering {bytes} bytes of buffers failed (ENOMEM): RLIMIT_MEMLOCK is too low; \
             raise it (ulimit -l) or lower buffer_size*buffer_count"
        ),
        Some(libc::EPERM) => format!(
            "registering {bytes} bytes of buffers was not permitted (EPERM), e.g. \
             io_uring_register blocked by a seccomp filter"
        ),
        _ => format!("registering {bytes} bytes of buffers failed: {err}"),
    }
}
