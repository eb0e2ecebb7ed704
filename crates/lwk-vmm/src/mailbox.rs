//! The monitor's side of a vCPU's mailbox (the guest side is the stub, see
//! `stub.rs`): atomic accesses to the mailbox words in guest RAM, shared with
//! the guest code spinning on them on another core.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::stub::mailbox as mb;

/// One vCPU's mailbox, by the host address of its stub page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    page: usize,
}

impl Mailbox {
    /// The mailbox of the stub page at host address `page`.
    ///
    /// The page must be a page of guest RAM that stays mapped for as long as
    /// this value is used (guest RAM lives as long as its LWK, and every
    /// mailbox user holds the LWK).
    pub fn at(page: usize) -> Mailbox {
        assert_eq!(page % 4096, 0, "a stub page is page aligned");
        Mailbox { page }
    }

    fn u32(&self, off: u64) -> &AtomicU32 {
        // SAFETY: `page` is a page-aligned host address inside the guest RAM
        // mapping, which outlives every Mailbox (see `at`); `off` is one of
        // the 4-aligned offsets below 4096 in `stub::mailbox`. The guest and
        // the monitor access these words only atomically (x86 aligned
        // loads/stores and `lock cmpxchg`), so an AtomicU32 view is sound.
        unsafe { &*((self.page + off as usize) as *const AtomicU32) }
    }

    fn u64(&self, off: u64) -> &AtomicU64 {
        // SAFETY: as in `u32`, with 8-aligned offsets.
        unsafe { &*((self.page + off as usize) as *const AtomicU64) }
    }

    /// The call's state (`stub::mailbox::STATE_*`).
    pub fn state(&self) -> u32 {
        self.u32(mb::STATE).load(Ordering::Acquire)
    }

    /// Set the state (answering a call, or resetting it).
    pub fn set_state(&self, s: u32) {
        self.u32(mb::STATE).store(s, Ordering::Release)
    }

    /// Claim a posted call for the proxy (REQUESTED -> CLAIMED).
    pub fn claim(&self) -> bool {
        self.u32(mb::STATE)
            .compare_exchange(
                mb::STATE_REQUESTED,
                mb::STATE_CLAIMED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// The call number and arguments.
    pub fn call(&self) -> (u64, [u64; 6]) {
        let nr = self.u64(mb::NR).load(Ordering::Relaxed);
        let mut a = [0u64; 6];
        for (i, v) in a.iter_mut().enumerate() {
            *v = self.u64(mb::ARGS + 8 * i as u64).load(Ordering::Relaxed);
        }
        (nr, a)
    }

    /// The user's return address saved by the stub.
    pub fn user_rip(&self) -> u64 {
        self.u64(mb::RIP).load(Ordering::Relaxed)
    }

    /// The user's flags saved by the stub.
    pub fn user_rflags(&self) -> u64 {
        self.u64(mb::RFLAGS).load(Ordering::Relaxed)
    }

    /// Store the result (before the state that publishes it).
    pub fn set_ret(&self, v: i64) {
        self.u64(mb::RET).store(v as u64, Ordering::Relaxed)
    }

    /// Tell the stub whether the proxy polls.
    pub fn set_proxy_awake(&self, awake: bool) {
        self.u32(mb::PROXY_AWAKE)
            .store(u32::from(awake), Ordering::SeqCst)
    }
}
