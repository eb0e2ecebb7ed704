#![deny(missing_docs)]

//! The lightweight kernel of Hobbes' `lwk` enclaves (the Kitten analog).
//!
//! One [`Lwk`] is one KVM virtual machine: the enclave. Its guest RAM is one
//! shareable file (a file in the daemon's huge-page tmpfs, or a memfd), fully
//! populated when the enclave is made, and mapped in the guest with 2 MiB
//! pages: nothing is ever demand-paged. Apps are unmodified static x86-64
//! Linux executables, run in guest user mode: each app is an address space
//! of its own (its own page tables) carved out of guest RAM, and each of its
//! threads runs on its own vCPU, pinned to one of the enclave's cores.
//!
//! There is no guest kernel. A guest `syscall` lands in a small stub on a
//! user page (on this machine's PVM `/dev/kvm` it stays at CPL3; on hardware
//! KVM it enters CPL0 and the stub returns with `sysretq`), which hands the
//! call to the monitor through a per-vCPU mailbox: a proxy thread on the
//! host's cores polls the mailboxes while calls keep coming (it answers
//! within about a microsecond, so a call costs about the trap: 31 µs on this
//! node's PVM, where the trap alone is 30 µs) and sleeps when idle; when it
//! sleeps, or for a call that may block, the stub exits to the vCPU's own
//! thread instead (about 120 µs here). Memory
//! calls (brk, mmap, munmap, mprotect, mremap) and time are served by the
//! LWK itself; the rest are forwarded: performed on the host with the app's
//! credentials, in the monitor's mount view, every guest pointer checked
//! against the app's address space first. See docs/lwk.md.

mod app;
mod calls;
mod cpu;
pub mod elf;
mod host;
pub mod initstack;
mod layout;
mod mailbox;
mod paging;
mod proxy;
mod ram;
mod space;
mod stub;
mod sysnames;
mod vcpu;
mod vm;

pub use app::{AppExit, CallSummary, GuestFault, Handling};
#[doc(hidden)]
pub use calls::fuzz_calls;
pub use vm::{App, LaunchError, Lwk};

use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// How an enclave's LWK is made.
#[derive(Debug, Clone)]
pub struct LwkConfig {
    /// Guest RAM in bytes (the enclave's memory); rounded down to 2 MiB.
    pub mem_bytes: u64,
    /// The host cores the enclave's vCPUs run on: an app's thread `i` is
    /// pinned to `cores[i % cores.len()]`.
    pub cores: Vec<u32>,
    /// Where to make the guest RAM file (the daemon's huge-page tmpfs); `None`:
    /// a memfd.
    pub memory_dir: Option<PathBuf>,
    /// The NUMA nodes guest RAM is allocated on (the enclave's); empty: the
    /// host's default policy.
    pub numa_nodes: Vec<u32>,
    /// The host cores the system-call proxy thread may run on (the host's
    /// cores, never the enclave's). Empty: no proxy; every call exits to its
    /// vCPU's thread.
    pub proxy_cores: Vec<u32>,
}

/// One app to start in an LWK.
#[derive(Debug)]
pub struct LaunchRequest {
    /// The executable, a host path (absolute, or relative to `cwd`).
    pub program: PathBuf,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory (forwarded path calls resolve against it).
    pub cwd: PathBuf,
    /// The uid forwarded calls run with.
    pub uid: u32,
    /// The gid forwarded calls run with.
    pub gid: u32,
    /// The app's descriptor 0.
    pub stdin: OwnedFd,
    /// The app's descriptor 1.
    pub stdout: OwnedFd,
    /// The app's descriptor 2.
    pub stderr: OwnedFd,
}

/// How an app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `exit_group`/`exit` of its last thread with this code (0-255).
    Code(i32),
    /// Ended by this signal's default action (a fault: SIGSEGV and others).
    Signal(i32),
}

impl ExitKind {
    /// Shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitKind::Code(c) => c,
            ExitKind::Signal(s) => 128 + s,
        }
    }
}

/// What went wrong making or running an LWK.
#[derive(Debug, thiserror::Error)]
pub enum LwkError {
    /// `/dev/kvm` is missing or refused us.
    #[error("KVM: {0}")]
    Kvm(String),
    /// Guest memory could not be made.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The enclave's guest memory is used up.
    #[error("the enclave's memory is used up")]
    OutOfMemory,
    /// A bad configuration.
    #[error("{0}")]
    Config(String),
    /// No such app, or it ended.
    #[error("{0}")]
    NoApp(String),
    /// A bug of ours, said rather than panicked.
    #[error("internal error: {0}")]
    Internal(String),
}
