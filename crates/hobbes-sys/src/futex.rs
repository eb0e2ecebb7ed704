//! Shared (not `FUTEX_PRIVATE`) futexes: they work between processes that
//! map the same file as well as between threads.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

use crate::{errno, Errno};

/// `FUTEX_WAIT` while `*word == expected`, at most `timeout`. Returns
/// `Ok` on wake-up, timeout, signal or a changed value alike (callers
/// re-check their condition); `Err` only for other failures.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Result<(), Errno> {
    let ts = futex::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    match futex::wait(word, futex::Flags::empty(), expected, Some(&ts)).map_err(errno) {
        Ok(()) | Err(Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `FUTEX_WAKE` at most `n` waiters on `word`; returns how many woke.
pub fn futex_wake(word: &AtomicU32, n: u32) -> Result<usize, Errno> {
    futex::wake(word, futex::Flags::empty(), n).map_err(errno)
}

/// `FUTEX_WAKE` every waiter on `word`; returns how many woke.
pub fn futex_wake_all(word: &AtomicU32) -> Result<usize, Errno> {
    futex_wake(word, i32::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn wake_without_waiters_wakes_nobody() {
        let word = AtomicU32::new(0);
        assert_eq!(futex_wake(&word, 1).unwrap(), 0);
        assert_eq!(futex_wake_all(&word).unwrap(), 0);
    }

    #[test]
    fn wait_times_out_and_sees_changes() {
        let word = AtomicU32::new(5);
        let t = std::time::Instant::now();
        futex_wait(&word, 5, Duration::from_millis(20)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(15));
        // A different value returns at once.
        let t = std::time::Instant::now();
        futex_wait(&word, 6, Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wake_releases_a_waiter() {
        let word = Arc::new(AtomicU32::new(0));
        let w = Arc::clone(&word);
        let waiter = std::thread::spawn(move || {
            while w.load(Ordering::Acquire) == 0 {
                futex_wait(&w, 0, Duration::from_secs(10)).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        word.store(1, Ordering::Release);
        futex_wake_all(&word).unwrap();
        waiter.join().unwrap();
    }
}
