//! The system calls the daemon and the control process use. The generic
//! wrappers live in `hobbes-sys` (descriptors, processes, credentials),
//! re-exported here so the daemon has one place to call. What remains here
//! is leviathan's own: finding an app's host pid from its pid inside the
//! enclave.

pub use hobbes_sys::creds::{geteuid, peer_cred, peer_hung_up, with_fs_identity, PeerCred};
pub use hobbes_sys::fd::{clear_cloexec, is_shared_memory_file, pidfd_getfd};
pub use hobbes_sys::process::{
    affinity, children_of, groups_of, kill, kill_group, new_session, ns_pids, parent_of,
    pidfd_open, proc_start_time, reset_oom_score_adj, same_process_alive, set_affinity,
    set_child_subreaper, set_parent_death_signal,
};

/// Find the host pid of the child of `parent` whose innermost pid is
/// `local` (an app started by an enclave's control process, which knows it
/// by its pid inside the enclave's PID namespace). Only children in a PID
/// namespace below the daemon's count: a guest's pid (a VM's, an LWK's) is
/// no host process, and a guest that claimed the pid of its monitor's own
/// child (QEMU, virtiofsd) must not have the daemon take that for its app.
pub fn host_pid_of_child(parent: u32, local: u32) -> Option<u32> {
    let own_depth = ns_pids(std::process::id()).len();
    children_of(parent).into_iter().find(|&child| {
        let ns = ns_pids(child);
        ns.len() > own_depth && ns.last() == Some(&local)
    })
}
