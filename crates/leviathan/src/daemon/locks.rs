//! The two locks a daemon holds, and recovery from holders a dead daemon left.
//!
//! - The **state directory lock**: `flock` on `<state-dir>/leviathan.pid`, one
//!   daemon per state directory.
//! - The **node lock**: an abstract Unix socket, one privileged daemon per
//!   node (it owns the node's cgroups). The kernel releases it when the
//!   holder dies and it leaves no file behind. Beside it, the node record
//!   (`/run/hobbes-leviathan-node.json`) says which daemon holds or last held
//!   it, and on which state directory, so a later daemon can tell whose
//!   leftovers it finds.
//!
//! Both locks live in open file descriptions, which `fork` shares: a child a
//! daemon forked and that never reached `exec` holds them too. The daemon's
//! own children close them at once (see kind-native's `spawn_in_new_namespaces`), but a
//! node may still meet such a *stray* (an older build, another fork path).
//! A stray is recognised as a process running the leviathan executable whose
//! name is not `leviathan`: a fork keeps the name of the daemon thread that
//! forked it (`client`, ...), while a daemon's main thread is `leviathan`.
//! Strays are killed, and the caller says so; any other holder is named in the
//! error with the command to run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::StatePaths;
use crate::sys;

/// Abstract socket that marks "a privileged leviathan manages this node's cgroups".
pub const NODE_LOCK: &[u8] = b"hobbes-leviathan-node-lock";

/// Which privileged daemon holds (or last held) the node lock.
pub const NODE_RECORD: &str = "/run/hobbes-leviathan-node.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub pid: u32,
    pub start_time: Option<u64>,
    pub state_dir: PathBuf,
}

impl NodeRecord {
    pub fn read() -> Option<NodeRecord> {
        let text = std::fs::read_to_string(NODE_RECORD).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn is_alive(&self) -> bool {
        sys::same_process_alive(self.pid, self.start_time)
    }

    /// Forget the record (a clean stop that left nothing on the node).
    pub fn remove_if_ours() {
        if NodeRecord::read().is_some_and(|r| r.pid == std::process::id()) {
            let _ = std::fs::remove_file(NODE_RECORD);
        }
    }
}

/// A held node lock, and the record of the daemon that held it before.
pub struct NodeLock {
    _socket: UnixListener,
    /// The previous holder's record, when there was one (it is dead now).
    pub previous: Option<NodeRecord>,
}

fn bind_node_lock() -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&SocketAddr::from_abstract_name(NODE_LOCK)?)
}

/// Try the node lock once, without recovery (for `leviathan cleanup`, which
/// only wants to know whether a daemon runs).
pub fn try_node_lock() -> std::io::Result<UnixListener> {
    bind_node_lock()
}

/// Take the node lock for the daemon on `state_dir` and write the node record.
/// A lock held only by strays of a dead daemon is recovered; `notes` says what
/// was done.
pub fn take_node_lock(state_dir: &Path, notes: &mut Vec<String>) -> anyhow::Result<NodeLock> {
    let socket = match bind_node_lock() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let record = NodeRecord::read();
            if let Some(r) = record.as_ref().filter(|r| r.is_alive()) {
                anyhow::bail!(
                    "another privileged leviathan (pid {}, state directory {}) already manages this node's cores; stop it first, or start this one with --unprivileged",
                    r.pid,
                    r.state_dir.display()
                );
            }
            let holders = socket_holders(NODE_LOCK);
            recover(&holders, "the node lock", notes)?;
            bind_node_lock().map_err(|e| {
                anyhow::anyhow!(
                    "the node lock is still held after recovery ({e}); holders: {}",
                    describe(&socket_holders(NODE_LOCK))
                )
            })?
        }
        Err(e) => return Err(anyhow::anyhow!("cannot take the node lock: {e}")),
    };
    let previous = NodeRecord::read();
    let ours = NodeRecord {
        pid: std::process::id(),
        start_time: sys::proc_start_time(std::process::id()),
        state_dir: state_dir.to_path_buf(),
    };
    write_record(&ours)?;
    Ok(NodeLock {
        _socket: socket,
        previous,
    })
}

fn write_record(r: &NodeRecord) -> anyhow::Result<()> {
    let tmp = format!("{NODE_RECORD}.{}", std::process::id());
    std::fs::write(&tmp, serde_json::to_vec(r)?)
        .and_then(|()| std::fs::rename(&tmp, NODE_RECORD))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write the node record {NODE_RECORD}: {e}")
        })
}

/// Hold the state directory: one daemon per directory. A lock left held by
/// strays of a dead daemon is recovered; `notes` says what was done.
pub fn lock_state_dir(paths: &StatePaths, notes: &mut Vec<String>) -> anyhow::Result<Flock<File>> {
    let path = paths.pid_file();
    for attempt in 0..2 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)?;
                writeln!(lock, "{}", std::process::id())?;
                return Ok(lock);
            }
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let recorded: Option<u32> = text.trim().parse().ok();
                let daemon_alive = recorded.is_some_and(|p| sys::same_process_alive(p, None));
                if daemon_alive || attempt > 0 {
                    anyhow::bail!(
                        "another leviathan (pid {}) already uses the state directory {}; stop it first, or use another --state-dir",
                        text.trim(),
                        paths.root.display()
                    );
                }
                let holders = file_holders(&path);
                recover(&holders, "the state directory lock", notes).map_err(|e| {
                    anyhow::anyhow!(
                        "the state directory {} is locked, but its leviathan (pid {}) is gone: {e}",
                        paths.root.display(),
                        text.trim()
                    )
                })?;
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// A process holding one of our locks.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
}

impl Holder {
    fn of(pid: u32) -> Holder {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Holder { pid, comm, exe }
    }

    /// A fork of a leviathan daemon that never reached `exec`.
    pub fn is_stray(&self) -> bool {
        let exe_name = Path::new(self.exe.trim_end_matches(" (deleted)"))
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        exe_name == "leviathan" && self.comm != "leviathan" && !self.comm.is_empty()
    }
}

fn describe(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "none found in /proc".into();
    }
    holders
        .iter()
        .map(|h| format!("pid {} ({}, {})", h.pid, h.comm, h.exe))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kill the strays among `holders`; refuse (naming them) if any holder is not one.
fn recover(holders: &[Holder], what: &str, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let others: Vec<Holder> = holders.iter().filter(|h| !h.is_stray()).cloned().collect();
    if !others.is_empty() {
        anyhow::bail!(
            "{what} is held by {} which is not a stray of a dead leviathan; stop it (`kill {}`) and retry",
            describe(&others),
            others.iter().map(|h| h.pid.to_string()).collect::<Vec<_>>().join(" ")
        );
    }
    for h in holders {
        kill_and_wait(h.pid)?;
        let note = format!(
            "killed pid {} ({}): a fork of a dead leviathan that still held {what}",
            h.pid, h.comm
        );
        tracing::warn!("{note}");
        notes.push(note);
    }
    Ok(())
}

/// SIGKILL `pid` and wait (bounded) until it is gone.
fn kill_and_wait(pid: u32) -> anyhow::Result<()> {
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(_) => return Ok(()), // already gone
    };
    let _ = sys::kill(pid, libc::SIGKILL);
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout = nix::poll::PollTimeout::try_from(Duration::from_secs(5))
        .unwrap_or(nix::poll::PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(n) if n > 0 => Ok(()),
        _ => anyhow::bail!("pid {pid} survived SIGKILL for 5 s"),
    }
}

/// Processes with a descriptor open on `path`.
pub fn file_holders(path: &Path) -> Vec<Holder> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    holders_where(|link| link == target.as_path())
}

/// Processes with a descriptor on the abstract Unix socket `name`.
pub fn socket_holders(name: &[u8]) -> Vec<Holder> {
    let inodes = abstract_socket_inodes(name);
    if inodes.is_empty() {
        return Vec::new();
    }
    let links: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    holders_where(|link| links.iter().any(|l| Path::new(l) == link))
}

/// Inodes of the sockets bound to abstract name `name` (/proc/net/unix).
fn abstract_socket_inodes(name: &[u8]) -> Vec<u64> {
    let want = format!("@{}", String::from_utf8_lossy(name));
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    parse_unix_table(&table, &want)
}

/// The inode column of `/proc/net/unix` rows whose path is `want`.
fn parse_unix_table(table: &str, want: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode [Path]
            (cols.len() >= 8 && cols[7] == want).then(|| cols[6].parse().ok())?
        })
        .collect()
}

fn holders_where(matches: impl Fn(&Path) -> bool) -> Vec<Holder> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| matches(&l)))
        {
            out.push(Holder::of(pid));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strays_are_forks_that_kept_a_thread_name() {
        let h = |comm: &str, exe: &str| Holder {
            pid: 1,
            comm: comm.into(),
            exe: exe.into(),
        };
        assert!(h("client", "/usr/local/bin/leviathan").is_stray());
        assert!(h("client", "/x/target/debug/leviathan (deleted)").is_stray());
        assert!(!h("leviathan", "/usr/local/bin/leviathan").is_stray());
        assert!(!h("python3", "/usr/bin/python3.11").is_stray());
        assert!(!h("", "/usr/local/bin/leviathan").is_stray());
    }

    #[test]
    fn unix_table_rows_by_abstract_name() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 43707 @hobbes-leviathan-node-lock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1234 /run/x.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 99\n";
        assert_eq!(
            parse_unix_table(table, "@hobbes-leviathan-node-lock"),
            vec![43707]
        );
        assert!(parse_unix_table(table, "@other").is_empty());
    }

    #[test]
    fn file_holders_finds_this_processes_children_only_by_descriptor() {
        // We hold the file ourselves, but a process never reports itself.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let _f = File::create(&path).unwrap();
        assert!(file_holders(&path)
            .iter()
            .all(|h| h.pid != std::process::id()));
    }
}
