//! `IoUringConfig` and `RingMode`: what a caller may ask of a ring, checked before any
//! kernel call so that a bad value is a `ValueError` naming the field, not an errno.

use std::fmt;

/// How submissions reach the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingMode {
    /// `io_uring_enter` hands queued entries to the kernel at flush time.
    Standard,
    /// A kernel thread polls the submission queue, so submitting costs no syscall while it is
    /// awake. It occupies a CPU while it polls.
    Sqpoll,
}

impl RingMode {
    pub fn name(self) -> &'static str {
        match self {
            RingMode::Standard => "STANDARD",
            RingMode::Sqpoll => "SQPOLL",
        }
    }
}

/// The largest submission queue the kernel accepts (IORING_MAX_ENTRIES).
pub const MAX_RING_ENTRIES: u32 = 32_768;
/// The kernel refuses more registered buffers than this (IORING_MAX_REG_BUFFERS).
pub const MAX_BUFFER_COUNT: usize = 16_384;
/// The kernel refuses a registered buffer larger than 1 GiB.
pub const MAX_BUFFER_SIZE: usize = 1 << 30;
/// Buffers are whole pages so that every one of them is aligned for O_DIRECT.
pub const PAGE_SIZE: usize = 4096;
/// Upper bound on the fixed-file table; far above what a per-core log writer needs.
pub const MAX_FILES: u32 = 65_536;
/// Chosen by measurement (docs/performance.md): far above what one group commit writes, so
/// group commits never trigger it; small enough that a stream of appends keeps the disk busy.
pub const DEFAULT_BACKGROUND_FLUSH_BYTES: usize = 1 << 20;
/// A bound that keeps the value meaningful; far above any useful setting.
pub const MAX_BACKGROUND_FLUSH_BYTES: usize = 1 << 40;
/// The kernel takes the SQPOLL idle time as u32 milliseconds; a day is plenty.
pub const MAX_SQPOLL_IDLE_MS: u32 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoUringConfig {
    pub ring_entries: u32,
    pub mode: RingMode,
    pub sqpoll_idle_ms: u32,
    /// The CPU the SQPOLL thread is pinned to, over the instance's core; has no effect in
    /// STANDARD mode.
    pub sqpoll_cpu: Option<u32>,
    pub buffer_size: usize,
    pub buffer_count: usize,
    pub max_files: u32,
    /// Once this many bytes written to one file have completed since its last datasync,
    /// the backend flushes them in the background (a ranged fdatasync of its own), so the
    /// disk works while the caller keeps writing and the next datasync has less left to do.
    /// 0 turns it off.
    pub background_flush_bytes: usize,
}

impl Default for IoUringConfig {
    fn default() -> Self {
        Self {
            ring_entries: 256,
            mode: RingMode::Sqpoll,
            sqpoll_idle_ms: 1000,
            sqpoll_cpu: None,
            buffer_size: 65_536,
            buffer_count: 256,
            max_files: 64,
            background_flush_bytes: DEFAULT_BACKGROUND_FLUSH_BYTES,
        }
    }
}

/// A config value outside its allowed range; the message names the field and the range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn out_of_range(field: &str, value: impl fmt::Display, allowed: &str) -> ConfigError {
    ConfigError(format!(
        "{field}={value} is out of range: allowed {allowed}"
    ))
}

impl IoUringConfig {
    /// Checks every field; the first bad one is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_RING_ENTRIES).contains(&self.ring_entries) {
            return Err(out_of_range(
                "ring_entries",
                self.ring_entries,
                &format!("1..={MAX_RING_ENTRIES}"),
            ));
        }
        if self.sqpoll_idle_ms > MAX_SQPOLL_IDLE_MS {
            return Err(out_of_range(
                "sqpoll_idle_ms",
                self.sqpoll_idle_ms,
                &format!("0..={MAX_SQPOLL_IDLE_MS}"),
            ));
        }
        if let Some(cpu) = self.sqpoll_cpu {
            let cpus = online_cpus();
            if cpu >= cpus {
                return Err(out_of_range(
                    "sqpoll_cpu",
                    cpu,
                    &format!("None or 0..={} (the CPUs online)", cpus - 1),
                ));
            }
        }
        if self.buffer_size == 0
            || self.buffer_size > MAX_BUFFER_SIZE
            || self.buffer_size % PAGE_SIZE != 0
        {
            return Err(out_of_range(
                "buffer_size",
                self.buffer_size,
                &format!("a multiple of {PAGE_SIZE} from {PAGE_SIZE} to {MAX_BUFFER_SIZE}"),
            ));
        }
        if !(1..=MAX_BUFFER_COUNT).contains(&self.buffer_count) {
            return Err(out_of_range(
                "buffer_count",
                self.buffer_count,
                &format!("1..={MAX_BUFFER_COUNT}"),
            ));
        }
        if self
            .buffer_size
            .checked_mul(self.buffer_count)
            .is_none_or(|total| total > isize::MAX as usize)
        {
            return Err(ConfigError(format!(
                "buffer_size*buffer_count={}*{} does not fit in memory",
                self.buffer_size, self.buffer_count
            )));
        }
        if !(1..=MAX_FILES).contains(&self.max_files) {
            return Err(out_of_range(
                "max_files",
                self.max_files,
                &format!("1..={MAX_FILES}"),
            ));
        }
        if self.background_flush_bytes > MAX_BACKGROUND_FLUSH_BYTES {
            return Err(out_of_range(
                "background_flush_bytes",
                self.background_flush_bytes,
                &format!("0 (off) to {MAX_BACKGROUND_FLUSH_BYTES}"),
            ));
        }
        Ok(())
    }
}

impl IoUringConfig {
    /// The config an instance on `core_id` builds its ring with: its SQPOLL thread pinned to
    /// `sqpoll_cpu` when that is set, else to `core_id` (the per-core model: the kernel
    /// thread that serves a core's submissions runs on that core), else to no CPU in
    /// particular. A `core_id` that is not an online CPU is refused, naming `core_id`.
    pub fn for_core(&self, core_id: Option<u32>) -> Result<IoUringConfig, ConfigError> {
        if let Some(core) = core_id {
            let cpus = online_cpus();
            if core >= cpus {
                return Err(out_of_range(
                    "core_id",
                    core,
                    &format!("None or 0..={} (the CPUs online)", cpus - 1),
                ));
            }
        }
        Ok(IoUringConfig {
            sqpoll_cpu: self.sqpoll_cpu.or(core_id),
            ..self.clone()
        })
    }
}

fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_and_are_valid() {
        let c = IoUringConfig::default();
        assert_eq!(c.ring_entries, 256);
        assert_eq!(c.mode, RingMode::Sqpoll);
        assert_eq!(c.sqpoll_idle_ms, 1000);
        assert_eq!(c.sqpoll_cpu, None);
        assert_eq!(c.buffer_size, 65_536);
        assert_eq!(c.buffer_count, 256);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_sqpoll_thread_goes_to_sqpoll_cpu_else_to_the_core() {
        let unpinned = IoUringConfig::default();
        assert_eq!(unpinned.for_core(None).unwrap().sqpoll_cpu, None);
        assert_eq!(unpinned.for_core(Some(0)).unwrap().sqpoll_cpu, Some(0));
        let pinned = IoUringConfig {
            sqpoll_cpu: Some(0),
            ..unpinned.clone()
        };
        assert_eq!(pinned.for_core(None).unwrap().sqpoll_cpu, Some(0));
        let last = online_cpus() - 1;
        assert_eq!(pinned.for_core(Some(last)).unwrap().sqpoll_cpu, Some(0));
        let refused = unpinned.for_core(Some(100_000)).unwrap_err().0;
        assert!(
            refused.starts_with("core_id=100000 is out of range"),
            "{refused}"
        );
    }

    fn message_of(c: IoUringConfig) -> String {
        c.validate().expect_err("config should be refused").0
    }

    // One table of every refused field and the name its message must carry; kept whole so
    // that a field added to the config is added to the one list.
    #[test]
    fn each_bad_field_is_named() {
        let d = IoUringConfig::default();
        let cases = [
            (
                IoUringConfig {
                    ring_entries: 0,
                    ..d.clone()
                },
                "ring_entries",
            ),
            (
                IoUringConfig {
                    ring_entries: 1 << 20,
                    ..d.clone()
                },
                "ring_entries",
            ),
            (
                IoUringConfig {
                    buffer_size: 0,
                    ..d.clone()
                },
                "buffer_size",
            ),
            (
                IoUringConfig {
                    buffer_size: 1000,
                    ..d.clone()
                },
                "buffer_size",
            ),
            (
                IoUringConfig {
                    buffer_count: 0,
                    ..d.clone()
                },
                "buffer_count",
            ),
            (
                IoUringConfig {
                    buffer_count: 1 << 20,
                    ..d.clone()
                },
                "buffer_count",
            ),
            (
                IoUringConfig {
                    max_files: 0,
                    ..d.clone()
                },
                "max_files",
            ),
            (
                IoUringConfig {
                    sqpoll_idle_ms: u32::MAX,
                    ..d.clone()
                },
                "sqpoll_idle_ms",
            ),
            (
                IoUringConfig {
                    sqpoll_cpu: Some(100_000),
                    ..d.clone()
                },
                "sqpoll_cpu",
            ),
            (
                IoUringConfig {
                    background_flush_bytes: MAX_BACKGROUND_FLUSH_BYTES + 1,
                    ..d.clone()
                },
                "background_flush_bytes",
            ),
        ];
        for (config, field) in cases {
            let msg = message_of(config);
            assert!(msg.contains(field), "{msg:?} should name {field}");
        }
    }
}
