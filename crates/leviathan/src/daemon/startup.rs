//! Daemon start (fresh or after a restart), the main loop, and shutdown.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};

use hobbes_nis::{NisError, NisWriter};
use hobbes_proto::model::{CoreId, Counters, EnclaveState, NisHeader, Ownership, SCHEMA_VERSION};

use super::enclaves::mems_of;
use super::link::reap_children;
use super::{now_ms, remove_tree, Daemon, StatePaths};
use crate::cgroup::Cgroups;
use crate::config::{format_cpu_list, Config};
use crate::kinds::native::NativeDriver;
use crate::{inventory, resources, sys};

/// Abstract socket that marks "a privileged leviathan manages this node's
/// cgroups": exclusive per node, released by the kernel when the holder dies,
/// and leaves no file behind.
const NODE_LOCK: &[u8] = b"hobbes-leviathan-node-lock";

fn take_node_lock() -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&SocketAddr::from_abstract_name(NODE_LOCK)?)
}

/// Hold the state directory: one daemon per directory.
fn lock_state_dir(paths: &StatePaths) -> anyhow::Result<Flock<File>> {
    let path = paths.pid_file();
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
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "another leviathan (pid {}) already uses the state directory {}; stop it first, or use another --state-dir",
                pid.trim(),
                paths.root.display()
            )
        }
    }
}

fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Threads spawned after this inherit the mask; signals are taken by sigwait below.
    let _ = set.thread_block();
    set
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let signals = block_signals();
    let privileged = sys::geteuid() == 0 && !cfg.unprivileged;
    let paths = StatePaths {
        root: cfg.state_dir.clone(),
    };
    std::fs::create_dir_all(&paths.root).map_err(|e| {
        anyhow::anyhow!(
            "cannot create state directory {}: {e}",
            paths.root.display()
        )
    })?;
    std::fs::set_permissions(&paths.root, std::fs::Permissions::from_mode(0o755))?;
    let _state_lock = lock_state_dir(&paths)?;
    let _node_lock = if privileged {
        Some(take_node_lock().map_err(|e| {
            anyhow::anyhow!("another privileged leviathan already manages this node's cores ({e}); stop it first, or start this one with --unprivileged")
        })?)
    } else {
        None
    };

    let mut inv = inventory::scan()?;
    if !privileged {
        // Without cgroups we can only pin to cores we may run on ourselves
        // (a batch job's cpuset, say): the others are not ours to hand out.
        let allowed = sys::affinity()?;
        inv.cores.retain(|c| allowed.contains(&c.id));
    }
    let nis = NisWriter::open(paths.nis())?;
    let cgroups = Cgroups::detect(privileged);
    let existing = nis.reader().header().ok();
    let generation = existing.as_ref().map(|h| h.generation + 1).unwrap_or(1);
    let counters = existing
        .as_ref()
        .map(|h| h.counters.clone())
        .unwrap_or(Counters {
            next_enclave_id: 1,
            next_app_id: 1,
            ..Default::default()
        });
    let header = NisHeader {
        schema_version: SCHEMA_VERSION,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        daemon_pid: std::process::id(),
        generation,
        started_ms: now_ms(),
        updated_ms: now_ms(),
        cgroup_mode: cgroups.mode(),
        privileged,
        socket: paths.socket().display().to_string(),
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
        counters,
    };
    if nis.reader().cores()?.is_empty() {
        // First start in this state directory: take the inventory.
        let (host_cores, host_blocks) = resources::host_share(
            &inv.cores,
            &inv.blocks,
            cfg.host_cores.as_deref(),
            cfg.host_memory_mib,
        )?;
        nis.update(|t| -> Result<(), NisError> {
            t.put_header(&header)?;
            for mut c in inv.cores.clone() {
                c.ownership = if host_cores.contains(&c.id) {
                    Ownership::Host
                } else {
                    Ownership::Free
                };
                t.put_core(&mut c)?;
            }
            for mut b in inv.blocks.clone() {
                b.ownership = if host_blocks.contains(&b.id) {
                    Ownership::Host
                } else {
                    Ownership::Free
                };
                t.put_block(&mut b)?;
            }
            Ok(())
        })?;
        tracing::info!(host_cores = %format_cpu_list(&host_cores), host_blocks = host_blocks.len(), synthetic_blocks = inv.synthetic_blocks, "inventory taken");
    } else {
        nis.update(|t| t.put_header(&header))?;
        if cfg.host_cores.is_some() || cfg.host_memory_mib.is_some() {
            tracing::warn!("state directory has an inventory already: --host-cores/--host-memory apply to a fresh state directory only");
        }
        tracing::info!(generation, "restarting on existing state");
    }

    let all_cores: Vec<CoreId> = nis.reader().cores()?.iter().map(|c| c.id).collect();
    let host_cores: Vec<CoreId> = nis
        .reader()
        .cores()?
        .iter()
        .filter(|c| c.ownership == Ownership::Host)
        .map(|c| c.id)
        .collect();
    let mut nodes: Vec<u32> = nis.reader().memory()?.iter().map(|b| b.numa_node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    super::remora::init_topology(&paths.root);
    let moved = cgroups
        .setup(&all_cores, &host_cores, &mems_of(&nodes))
        .map_err(|e| anyhow::anyhow!("cgroup setup: {e}"))?;
    tracing::info!(mode = ?cgroups.mode(), host_tasks_moved = moved, host_cores = %format_cpu_list(&host_cores), privileged, "host confined to its cores");

    let thp_restore = if cfg.shmem_thp && privileged {
        set_shmem_thp("advise")
    } else {
        None
    };
    let exe = std::fs::read_link("/proc/self/exe")?;
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        paths: paths.clone(),
        nis: Arc::new(nis),
        privileged,
        native: NativeDriver {
            cgroups: cgroups.clone(),
            exe,
        },
        links: Mutex::new(HashMap::new()),
        links_changed: Condvar::new(),
        subs: Mutex::new(HashMap::new()),
        reattach_deadline: Mutex::new(HashMap::new()),
        shutting_down: AtomicBool::new(false),
        clients: AtomicUsize::new(0),
        backings: Mutex::new(HashMap::new()),
        jobs: Mutex::new(HashMap::new()),
    });
    daemon.reconcile()?;
    daemon.recover_segments();

    let bind = |path: &Path, mode: u32| -> anyhow::Result<UnixListener> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(l)
    };
    // Anyone may connect to the client socket: every request is authorized by SO_PEERCRED.
    let clients = bind(&paths.socket(), 0o666)?;
    let controls = bind(&paths.control_socket(), 0o600)?;
    {
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || d.serve_control(controls))?;
    }
    {
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || d.health_loop())?;
    }
    {
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("segment-owners".into())
            .spawn(move || d.watch_segment_owners())?;
    }
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_children)?;
    {
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("client-accept".into())
            .spawn(move || d.serve_clients(clients))?;
    }
    tracing::info!(socket = %paths.socket().display(), pid = std::process::id(), "leviathan ready");

    let sig = signals.wait().unwrap_or(Signal::SIGTERM);
    tracing::info!(signal = ?sig, "shutting down");
    daemon.shutdown();
    if let Some(previous) = thp_restore {
        set_shmem_thp(&previous);
    }
    Ok(())
}

const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Set the shmem THP mode; returns the previous one (the bracketed word).
fn set_shmem_thp(mode: &str) -> Option<String> {
    let current = std::fs::read_to_string(SHMEM_THP).ok()?;
    let previous = current
        .split_whitespace()
        .find(|w| w.starts_with('['))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    match std::fs::write(SHMEM_THP, mode) {
        Ok(()) => {
            tracing::info!(mode, previous = %previous, "shmem transparent huge pages");
            Some(previous)
        }
        Err(e) => {
            tracing::warn!(mode, error = %e, "cannot set shmem transparent huge pages");
            None
        }
    }
}

impl Daemon {
    /// After a restart: keep what still runs, mark what died, finish what was half done.
    fn reconcile(&self) -> anyhow::Result<()> {
        let grace = (3 * self.heartbeat_timeout()).max(Duration::from_secs(5));
        let mut dead = Vec::new();
        for rec in self.nis.reader().enclaves()? {
            let Some(driver) = self.driver(rec.kind) else {
                continue;
            };
            match rec.state {
                EnclaveState::Running | EnclaveState::Starting if driver.is_alive(&rec) => {
                    if self.privileged {
                        self.nis
                            .attach_replica(rec.id, self.paths.enclave_dir(rec.id).join("nis"))?;
                    }
                    self.reattach_deadline
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(rec.id, Instant::now() + grace);
                    tracing::info!(enclave = rec.id, name = %rec.name, pid = ?rec.control_pid, "enclave still alive; waiting for its control process to reattach");
                }
                EnclaveState::Running | EnclaveState::Starting => dead.push(rec.id),
                EnclaveState::Stopping => self
                    .remove_enclave(&rec, "enclave destroyed")
                    .map_err(|e| anyhow::anyhow!(e.message))?,
                EnclaveState::Crashed => {}
            }
        }
        for id in dead {
            self.enclave_crashed(id, "control process died while leviathan was down");
        }
        // Apps whose enclave is gone can never report.
        let enclaves: Vec<_> = self
            .nis
            .reader()
            .enclaves()?
            .into_iter()
            .map(|e| (e.id, e.state))
            .collect();
        for app in self.nis.reader().apps()? {
            let alive = enclaves.iter().any(|(id, st)| {
                *id == app.enclave && matches!(st, EnclaveState::Running | EnclaveState::Starting)
            });
            if !app.state.is_final() && !alive {
                self.app_ended(app.id, None, Some("lost: its enclave is gone".into()));
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if !self.cfg.keep_enclaves_on_exit {
            for rec in self.nis.reader().enclaves().unwrap_or_default() {
                tracing::info!(enclave = rec.id, name = %rec.name, "destroying enclave at shutdown");
                if let Err(e) = self.remove_enclave(&rec, "leviathan shut down") {
                    tracing::error!(enclave = rec.id, error = %e.message, "cannot stop enclave");
                }
            }
            if let Err(e) = self.native.cgroups.teardown() {
                tracing::error!(error = %e, "cannot restore the host's cpuset");
            }
        } else {
            tracing::info!("keeping enclaves running (keep_enclaves_on_exit)");
        }
        let _ = std::fs::remove_file(self.paths.socket());
        let _ = std::fs::remove_file(self.paths.control_socket());
        let _ = std::fs::remove_file(self.paths.pid_file());
        tracing::info!("leviathan stopped");
    }
}

/// `leviathan cleanup`: after a daemon was killed for good, kill its enclaves,
/// remove their cgroups, give the host its cores back and remove the state directory.
pub fn cleanup(state_dir: &Path, keep_state: bool) -> anyhow::Result<()> {
    let paths = StatePaths {
        root: state_dir.to_path_buf(),
    };
    if paths.pid_file().exists() {
        let _lock = lock_state_dir(&paths)?;
    }
    let privileged = sys::geteuid() == 0;
    let cgroups = Cgroups::detect(privileged);
    if paths.nis().join("data.mdb").exists() {
        let nis = hobbes_nis::NisReader::open(paths.nis())?;
        for rec in nis.enclaves()? {
            if let Some(pid) = rec
                .control_pid
                .filter(|p| sys::same_process_alive(*p, rec.control_start_time))
            {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            for shared in [false, true] {
                if let Some(cg) = cgroups.enclave(rec.id, shared) {
                    if cg.exists() {
                        cg.kill_all(Duration::from_secs(5))?;
                        cg.remove()?;
                    }
                }
            }
            println!("removed enclave {} ({})", rec.id, rec.name);
        }
    }
    // Another privileged daemon may be managing the node: then leave the host's cpuset alone.
    match take_node_lock() {
        Ok(_lock) => cgroups.teardown()?,
        Err(_) if privileged => {
            println!("another leviathan manages this node: host cpuset left as it is")
        }
        Err(_) => {}
    }
    if !keep_state {
        remove_tree(state_dir);
    }
    Ok(())
}
