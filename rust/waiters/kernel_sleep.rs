//! Sleeping in io_uring_enter without the instance's lock: the raw syscall, since it
//! touches no user-space ring memory and so needs no `&mut` of the ring (which the lock
//! guards).

use std::time::Duration;

use crate::manager::SleepTicket;

/// io_uring_enter(2) flags and the extended-argument layout (include/uapi/linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;

const IORING_ENTER_SQ_WAKEUP: u32 = 1 << 1;

const IORING_ENTER_EXT_ARG: u32 = 1 << 3;

#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// One io_uring_enter on `ticket`'s ring: sleeps until `want` CQEs are unreaped, `timeout`
/// passes (not an error) or a signal arrives (`Interrupted`). Called without the instance's
/// lock: it touches no user-space ring memory, and submits nothing (see
/// `manager::sleeping`), so a refusal loses no SQE: EAGAIN and EBUSY come back as a
/// wake-up, anything else as the error.
pub(super) fn enter_and_wait(
    ticket: SleepTicket,
    timeout: Option<Duration>,
) -> std::io::Result<()> {
    let mut flags = IORING_ENTER_GETEVENTS;
    if ticket.wake_sqpoll {
        flags |= IORING_ENTER_SQ_WAKEUP;
    }
    let ts = timeout.map(|t| KernelTimespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let arg = ts.as_ref().map(|ts| GeteventsArg {
        sigmask: 0,
        sigmask_sz: 0,
        min_wait_usec: 0,
        ts: ts as *const KernelTimespec as u64,
    });
    let (argp, argsz) = match &arg {
        Some(a) => {
            flags |= IORING_ENTER_EXT_ARG;
            (
                a as *const GeteventsArg as *const libc::c_void,
                std::mem::size_of::<GeteventsArg>(),
            )
        }
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the ring descriptor stays open while anyone sleeps on it (`close` waits for
    // the sleeper); `argp` is null or points at `arg`, which (with the timespec it points
    // at) lives until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            ticket.fd,
            0,
            ticket.want,
            flags,
            argp,
            argsz,
        )
    };
    if rc >= 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(()),
        _ => Err(err),
    }
}
