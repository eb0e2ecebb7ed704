//! Daemon start (fresh or after a restart), the main loop, and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use hobbes_nis::{NisError, NisWriter};
use hobbes_proto::model::{
    BlockId, CgroupMode, CoreId, Counters, EnclaveState, NisHeader, Ownership, SegmentFiles,
    SCHEMA_VERSION,
};

use super::link::reap_children;
use super::locks::{lock_state_dir, take_node_lock, try_node_lock, NodeRecord};
use super::{now_ms, remove_tree, Daemon, StatePaths};
use crate::config::{format_cpu_list, Config, ManagedMemory};
use crate::kinds::{KindEnv, KindRegistry, NodeSetup};
use crate::{inventory, resources, sys};

fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Threads spawned after this inherit the mask; signals are taken by sigwait below.
    let _ = set.thread_block();
    set
}

/// Run the daemon until SIGTERM/SIGINT, with this leviathan's kinds.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    run_with(cfg, crate::kinds::registry)
}

/// Run the daemon until SIGTERM/SIGINT with the kinds `kinds` registers.
///
/// The order matters: signals are blocked before any thread starts (they
/// inherit the mask); the state directory is locked before the NIS opens;
/// leftovers are checked before anything on the node changes; the inventory
/// is recorded before the kinds set the node up; the daemon reconciles its
/// records before the sockets accept anyone.
pub fn run_with(cfg: Config, kinds: impl FnOnce(&KindEnv) -> KindRegistry) -> anyhow::Result<()> {
    cfg.validate()?;
    let signals = block_signals();
    let privileged = sys::geteuid() == 0 && !cfg.unprivileged;
    let paths = StatePaths {
        root: cfg.state_dir.clone(),
    };
    // Every flag about what we manage is checked before anything changes.
    let plan = plan_inventory(&cfg, privileged)?;
    make_state_dir(&paths)?;
    let mut recovered = Vec::new();
    // Held until the daemon stops: one daemon per state directory, and per node.
    let _state_lock = lock_state_dir(&paths, &mut recovered)?;
    let kinds = kinds(&KindEnv {
        privileged,
        exe: std::fs::read_link("/proc/self/exe")?,
    });
    let nis = NisWriter::open(paths.nis())?;
    check_managed(&paths, &nis, &plan)?;
    let _node_lock = match privileged {
        true => Some(take_node(&kinds, &paths, &nis, &mut recovered)?),
        false => None,
    };
    for note in &recovered {
        tracing::warn!("recovered at start: {note}");
    }
    let mut header = node_header(&cfg, &paths, privileged, &nis, &kinds);
    header.segment_files = segment_files(&paths, privileged);
    let hugetlb = reserve_hugetlb(&cfg, &paths, privileged)?;
    header.segment_files.hugetlb_reserved = hugetlb.as_ref().map_or(0, |r| r.added);
    record_inventory(&cfg, &paths, &nis, &header, &plan)?;
    super::remora::init_topology(&paths.root);
    let node = node_setup(&nis, cfg.slurm_cgroups)?;
    for kind in kinds.iter() {
        kind.setup(&node).map_err(|e| anyhow::anyhow!("{e}"))?;
    }

    let thp_restore = if cfg.shmem_thp && privileged {
        set_shmem_thp("advise")
    } else {
        None
    };
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        paths: paths.clone(),
        nis: Arc::new(nis),
        privileged,
        kinds,
        links: super::link::Links::new(),
        subs: super::apps::Subscribers::new(),
        joins: super::apps::JoinEvents::default(),
        shutting_down: AtomicBool::new(false),
        admission: super::admission::Admission::new(cfg.max_clients_per_uid),
        fd_reserve: super::admission::FdReserve::new(),
        log_limiter: super::admission::LogLimiter::new(),
        xemem: super::xemem::NameServer::new(),
        jobs: super::remora::Jobs::new(),
        subset_of: plan.subset.as_ref().map(|_| plan.node.clone()),
    });
    daemon.reconcile()?;
    daemon.recover_segments();
    start_threads(&daemon, &paths)?;
    tracing::info!(socket = %paths.socket().display(), pid = std::process::id(), "leviathan ready");

    let sig = signals.wait().unwrap_or(Signal::SIGTERM);
    tracing::info!(signal = ?sig, "shutting down");
    daemon.shutdown();
    if privileged {
        super::segment_mount::unmount(&paths.root);
    }
    if let Some(reservation) = hugetlb {
        reservation.release();
    }
    if let Some(previous) = thp_restore {
        set_shmem_thp(&previous);
    }
    Ok(())
}

/// Where segment memory is made: the daemon's huge-page tmpfs when it can
/// mount one, else memfds, with the reason (`hobbes status` says it).
fn segment_files(paths: &StatePaths, privileged: bool) -> SegmentFiles {
    if !privileged {
        return SegmentFiles {
            dir: None,
            fallback: Some(
                "memfds: an unprivileged daemon cannot mount its huge-page tmpfs".into(),
            ),
            hugetlb_reserved: 0,
        };
    }
    match super::segment_mount::mount(&paths.root) {
        Ok(dir) => SegmentFiles {
            dir: Some(dir.display().to_string()),
            fallback: None,
            hugetlb_reserved: 0,
        },
        Err(why) => {
            tracing::warn!("segment memory falls back to memfds: {why}");
            SegmentFiles {
                dir: None,
                fallback: Some(format!("memfds: {why}")),
                hugetlb_reserved: 0,
            }
        }
    }
}

/// `--hugepages N`: add N hugetlb pages to the node's reserve while we run,
/// after giving back what a killed daemon on this state directory left.
fn reserve_hugetlb(
    cfg: &Config,
    paths: &StatePaths,
    privileged: bool,
) -> anyhow::Result<Option<super::hugetlb::Reservation>> {
    if !privileged {
        anyhow::ensure!(
            cfg.hugepages == 0,
            "--hugepages needs a privileged daemon (root, without --unprivileged)"
        );
        return Ok(None);
    }
    if cfg.hugepages == 0 {
        super::hugetlb::give_back(&paths.root);
        return Ok(None);
    }
    super::hugetlb::reserve(&paths.root, cfg.hugepages)
        .map(Some)
        .map_err(|why| anyhow::anyhow!("--hugepages {}: {why}", cfg.hugepages))
}

/// Create the state directory (mode 0755: clients must reach the socket).
fn make_state_dir(paths: &StatePaths) -> anyhow::Result<()> {
    std::fs::create_dir_all(&paths.root).map_err(|e| {
        anyhow::anyhow!(
            "cannot create state directory {}: {e}",
            paths.root.display()
        )
    })?;
    std::fs::set_permissions(&paths.root, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Privileged: take the node lock, then, before anything on the node
/// changes, check whose cgroups are there (`check_leftovers`).
fn take_node(
    kinds: &KindRegistry,
    paths: &StatePaths,
    nis: &NisWriter,
    recovered: &mut Vec<String>,
) -> anyhow::Result<super::locks::NodeLock> {
    let lock = take_node_lock(&paths.root, recovered)?;
    let ours = nis.reader().enclaves()?;
    check_leftovers(kinds, paths, &ours, lock.previous.as_ref(), recovered)?;
    Ok(lock)
}

/// The NIS header of this start: a new generation, the counters kept from
/// the previous one, the kinds' descriptions of the node.
fn node_header(
    cfg: &Config,
    paths: &StatePaths,
    privileged: bool,
    nis: &NisWriter,
    kinds: &KindRegistry,
) -> NisHeader {
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
    let mut header = NisHeader {
        schema_version: SCHEMA_VERSION,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        daemon_pid: std::process::id(),
        generation,
        started_ms: now_ms(),
        updated_ms: now_ms(),
        cgroup_mode: CgroupMode::None,
        privileged,
        socket: paths.socket().display().to_string(),
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        heartbeat_timeout_ms: cfg.heartbeat_timeout_ms,
        counters,
        segment_files: Default::default(),
        vm_support: None,
    };
    for kind in kinds.iter() {
        kind.describe_node(&mut header);
    }
    header
}

/// What a daemon manages, resolved from its flags and a fresh scan of the
/// node before anything on the node changes ([`plan_inventory`]).
struct Plan {
    /// The managed cores and memory blocks, all free.
    inventory: inventory::Inventory,
    /// Which of them the host keeps.
    host_cores: Vec<CoreId>,
    host_blocks: Vec<BlockId>,
    /// The node's online cores and memory (an unprivileged daemon: the cores
    /// of its affinity).
    node: super::NodeTotals,
    /// The subset asked for (`--cpus`, `--memory`, `--memory-blocks`), as
    /// the state directory records it; `None`: the whole node.
    subset: Option<ManagedRecord>,
}

/// The subset a state directory was created for (`<state>/managed.json`;
/// none for a whole-node daemon): a later start must ask for the same one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ManagedRecord {
    /// `--cpus`, sorted; `None`: every core.
    cpus: Option<Vec<CoreId>>,
    /// `--memory` or `--memory-blocks`; `None`: every block.
    memory: Option<ManagedMemory>,
}

impl ManagedRecord {
    fn describe(record: Option<&ManagedRecord>) -> String {
        let Some(r) = record else {
            return "the whole node (no --cpus, --memory or --memory-blocks)".into();
        };
        let cpus = match &r.cpus {
            Some(c) => format!("--cpus {}", format_cpu_list(c)),
            None => "every core".into(),
        };
        let memory = match &r.memory {
            Some(ManagedMemory::Mib(m)) => format!("--memory {m}"),
            Some(ManagedMemory::Blocks(b)) => format!("--memory-blocks {}", format_cpu_list(b)),
            None => "all memory".into(),
        };
        format!("{cpus}, {memory}")
    }
}

/// Scan the node and resolve what this daemon manages and what the host
/// keeps of it. Pure: an error (a core not online, a block not present, a
/// host share outside the subset or leaving nothing) changes nothing.
fn plan_inventory(cfg: &Config, privileged: bool) -> anyhow::Result<Plan> {
    let mut inv = inventory::scan()?;
    if !privileged {
        // Without cgroups we can only pin to cores we may run on ourselves
        // (a batch job's cpuset, say): the others are not ours to hand out.
        let allowed = sys::affinity()?;
        if let Some(c) = cfg.cpus.iter().flatten().find(|c| !allowed.contains(c)) {
            anyhow::bail!(
                "--cpus: core {c} is not in this unprivileged daemon's CPU affinity ({}): it pins enclaves only to cores it may run on itself",
                format_cpu_list(&allowed)
            );
        }
        inv.cores.retain(|c| allowed.contains(&c.id));
    }
    let node = super::NodeTotals {
        cores: inv.cores.iter().map(|c| c.id).collect(),
        mem: inv.blocks.iter().map(|b| b.size).sum(),
    };
    let (cores, blocks) = resources::managed_share(
        &inv.cores,
        &inv.blocks,
        cfg.cpus.as_deref(),
        cfg.memory.as_ref(),
    )?;
    inv.cores = cores;
    inv.blocks = blocks;
    let (host_cores, host_blocks) = resources::host_share(
        &inv.cores,
        &inv.blocks,
        cfg.host_cores.as_deref(),
        cfg.host_memory_mib,
        cfg.subset(),
    )?;
    let subset = cfg.subset().then(|| ManagedRecord {
        cpus: cfg.cpus.clone(),
        memory: cfg.memory.clone(),
    });
    Ok(Plan {
        inventory: inv,
        host_cores,
        host_blocks,
        node,
        subset,
    })
}

/// The subset recorded in the state directory, if any.
fn recorded_subset(paths: &StatePaths) -> anyhow::Result<Option<ManagedRecord>> {
    let path = paths.managed();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Like the host's share, the subset is fixed when the state directory is
/// created: a restart that asks for another one is refused, before anything
/// on the node changes.
fn check_managed(paths: &StatePaths, nis: &NisWriter, plan: &Plan) -> anyhow::Result<()> {
    if nis.reader().cores()?.is_empty() {
        return Ok(());
    }
    let recorded = recorded_subset(paths)?;
    anyhow::ensure!(
        recorded == plan.subset,
        "state directory {} was created to manage {}, and this start asks for {}: start leviathan with the flags it was created with, or use another --state-dir (`leviathan cleanup --state-dir {}` removes this one once no daemon runs on it)",
        paths.root.display(),
        ManagedRecord::describe(recorded.as_ref()),
        ManagedRecord::describe(plan.subset.as_ref()),
        paths.root.display()
    );
    Ok(())
}

/// Write `header`; on the first start in this state directory also take the
/// inventory (one transaction: the managed cores and memory blocks, the
/// host's share marked; the subset recorded first, so a start that dies
/// before the transaction is still a first start), on a restart keep the
/// recorded one.
fn record_inventory(
    cfg: &Config,
    paths: &StatePaths,
    nis: &NisWriter,
    header: &NisHeader,
    plan: &Plan,
) -> anyhow::Result<()> {
    if !nis.reader().cores()?.is_empty() {
        nis.update(|t| t.put_header(header))?;
        if cfg.host_cores.is_some() || cfg.host_memory_mib.is_some() {
            tracing::warn!("state directory has an inventory already: --host-cores/--host-memory apply to a fresh state directory only");
        }
        tracing::info!(
            generation = header.generation,
            "restarting on existing state"
        );
        return Ok(());
    }
    write_subset(paths, plan.subset.as_ref())?;
    let inv = &plan.inventory;
    let owner = |host: bool| match host {
        true => Ownership::Host,
        false => Ownership::Free,
    };
    nis.update(|t| -> Result<(), NisError> {
        t.put_header(header)?;
        for mut c in inv.cores.clone() {
            c.ownership = owner(plan.host_cores.contains(&c.id));
            t.put_core(&mut c)?;
        }
        for mut b in inv.blocks.clone() {
            b.ownership = owner(plan.host_blocks.contains(&b.id));
            t.put_block(&mut b)?;
        }
        Ok(())
    })?;
    if let Some(subset) = &plan.subset {
        tracing::info!(
            cores = %format_cpu_list(&inv.cores.iter().map(|c| c.id).collect::<Vec<_>>()),
            blocks = %format_cpu_list(&inv.blocks.iter().map(|b| b.id).collect::<Vec<_>>()),
            mib = inv.blocks.iter().map(|b| b.size).sum::<u64>() >> 20,
            asked = %ManagedRecord::describe(Some(subset)),
            "managing part of the node"
        );
    }
    tracing::info!(host_cores = %format_cpu_list(&plan.host_cores), host_blocks = plan.host_blocks.len(), synthetic_blocks = inv.synthetic_blocks, "inventory taken");
    Ok(())
}

/// Record the subset (or that there is none) in a fresh state directory.
fn write_subset(paths: &StatePaths, subset: Option<&ManagedRecord>) -> anyhow::Result<()> {
    let path = paths.managed();
    let Some(subset) = subset else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::anyhow!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        };
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(subset)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// What the kinds' set-up needs from the recorded inventory.
fn node_setup(nis: &NisWriter, slurm_cgroups: bool) -> anyhow::Result<NodeSetup> {
    let cores = nis.reader().cores()?;
    let all_cores: Vec<CoreId> = cores.iter().map(|c| c.id).collect();
    let host_cores: Vec<CoreId> = cores
        .iter()
        .filter(|c| c.ownership == Ownership::Host)
        .map(|c| c.id)
        .collect();
    let mut nodes: Vec<u32> = nis.reader().memory()?.iter().map(|b| b.numa_node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    Ok(NodeSetup {
        all_cores,
        host_cores,
        numa_nodes: nodes,
        slurm_cgroups,
    })
}

/// Bind a socket at `path` (replacing a stale one) with `mode`.
fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Bind the sockets and start the daemon's threads; clients last, once
/// control processes can attach and the health checks run.
fn start_threads(daemon: &Arc<Daemon>, paths: &StatePaths) -> anyhow::Result<()> {
    // Anyone may connect to the client socket: every request is authorized by SO_PEERCRED.
    let clients = bind(&paths.socket(), 0o666)?;
    let controls = bind(&paths.control_socket(), 0o600)?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("control-accept".into())
        .spawn(move || d.serve_control(controls))?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || d.health_loop())?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("segment-owners".into())
        .spawn(move || d.watch_segment_owners())?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_children)?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("client-accept".into())
        .spawn(move || d.serve_clients(clients))?;
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
                    self.links.expect_reattach(rec.id, Instant::now() + grace);
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
        // Whatever clients did to our descriptor table, tearing down must be able
        // to open cgroup and /proc files.
        self.fd_reserve.release_all();
        if !self.cfg.keep_enclaves_on_exit {
            for rec in self.nis.reader().enclaves().unwrap_or_default() {
                tracing::info!(enclave = rec.id, name = %rec.name, "destroying enclave at shutdown");
                if let Err(e) = self.remove_enclave(&rec, "leviathan shut down") {
                    tracing::error!(enclave = rec.id, error = %e.message, "cannot stop enclave");
                }
            }
            for kind in self.kinds.iter().rev() {
                if let Err(e) = kind.teardown() {
                    tracing::error!(kind = kind.kind().as_str(), error = %e, "cannot undo the kind's node set-up");
                }
            }
            if self.privileged && self.nis.reader().enclaves().unwrap_or_default().is_empty() {
                // Nothing of ours is left on the node for a later daemon to find.
                NodeRecord::remove_if_ours();
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

/// Enclave records of the state directory's NIS (none on a fresh one), read
/// without creating anything. (Not for the daemon itself: a process caches one
/// environment per directory, and this one is read-only.)
fn recorded_enclaves(
    paths: &StatePaths,
) -> anyhow::Result<Vec<hobbes_proto::model::EnclaveRecord>> {
    if !paths.nis().join("data.mdb").exists() {
        return Ok(Vec::new());
    }
    Ok(hobbes_nis::NisReader::open(paths.nis())?.enclaves()?)
}

/// A starting daemon looks at every enclave object of every kind on the node
/// (the native kind: enclave cgroups). Its own (recorded in its NIS) are
/// adopted by `reconcile`; empty ones of any other daemon are removed; live
/// ones of another daemon make it refuse to start, with the command that
/// resolves it: their cores are not free.
fn check_leftovers(
    kinds: &KindRegistry,
    paths: &StatePaths,
    ours: &[hobbes_proto::model::EnclaveRecord],
    previous: Option<&NodeRecord>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut busy = Vec::new();
    let mut nouns = Vec::new();
    for left in kinds.iter().flat_map(|k| k.leftovers()) {
        if ours.iter().any(|r| r.id == left.enclave()) {
            continue;
        }
        let noun = left.noun().to_string();
        let procs = left.pids();
        if procs.is_empty() {
            left.remove()
                .map_err(|e| anyhow::anyhow!("cannot remove a leftover enclave {noun}: {e}"))?;
            notes.push(format!(
                "removed the empty {noun} {} left by an earlier leviathan",
                left.location()
            ));
        } else {
            busy.push(format!("{} (pids {procs:?})", left.location()));
            if !nouns.contains(&noun) {
                nouns.push(noun);
            }
        }
    }
    if busy.is_empty() {
        return Ok(());
    }
    let elsewhere = previous
        .map(|r| r.state_dir.clone())
        .filter(|d| *d != paths.root && d.join("nis").join("data.mdb").exists());
    let hint = match elsewhere {
        Some(dir) => format!(
            "they belong to the leviathan that last ran on state directory {dir}: start leviathan there to adopt them, or run `leviathan cleanup --state-dir {dir}` to destroy them",
            dir = dir.display()
        ),
        None => format!(
            "their daemon's state directory is unknown or gone: run `leviathan cleanup --orphans` to kill them and remove their {}",
            nouns.iter().map(|n| format!("{n}s")).collect::<Vec<_>>().join(" and ")
        ),
    };
    anyhow::bail!(
        "enclaves of another leviathan still run on this node and hold cores: {}; {hint}",
        busy.join(", ")
    )
}

/// `leviathan cleanup`: after a daemon was killed for good, kill its enclaves,
/// remove their OS-level objects (cgroups), give the host its cores back and
/// remove the state directory. With `orphans`, also every other enclave
/// object of every kind on the node (enclaves no daemon runs: their state
/// directory gone).
pub fn cleanup(state_dir: &Path, keep_state: bool, orphans: bool) -> anyhow::Result<()> {
    cleanup_with(state_dir, keep_state, orphans, crate::kinds::registry)
}

/// [`cleanup`] with the kinds `kinds` registers.
pub fn cleanup_with(
    state_dir: &Path,
    keep_state: bool,
    orphans: bool,
    kinds: impl FnOnce(&KindEnv) -> KindRegistry,
) -> anyhow::Result<()> {
    let paths = StatePaths {
        root: state_dir.to_path_buf(),
    };
    let mut recovered = Vec::new();
    let _lock = if paths.pid_file().exists() {
        Some(lock_state_dir(&paths, &mut recovered)?)
    } else {
        None
    };
    let privileged = sys::geteuid() == 0;
    let kinds = kinds(&KindEnv {
        privileged,
        exe: std::fs::read_link("/proc/self/exe")?,
    });
    // No daemon may run while we take the node's cgroups apart: hold the node lock.
    let node_lock = match try_node_lock() {
        Ok(l) => Some(l),
        Err(_) if privileged => {
            let holder =
                NodeRecord::read().filter(|r| sys::same_process_alive(r.pid, r.start_time));
            match holder {
                Some(r) if r.state_dir == paths.root => anyhow::bail!(
                    "leviathan (pid {}) runs on {}: stop it first",
                    r.pid,
                    paths.root.display()
                ),
                Some(r) => println!(
                    "leviathan (pid {}) manages this node from {}: its enclaves and the host's cpuset are left as they are",
                    r.pid,
                    r.state_dir.display()
                ),
                None => {
                    // Only strays of a dead daemon can hold it: recover it.
                    let taken = super::locks::take_node_lock(&paths.root, &mut recovered)?;
                    drop(taken);
                }
            }
            try_node_lock().ok()
        }
        Err(_) => None,
    };
    for note in &recovered {
        println!("{note}");
    }
    for rec in recorded_enclaves(&paths)? {
        if let Some(kind) = kinds.get(rec.kind) {
            kind.clean_up(&rec, node_lock.is_some())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // Its directories inside a Slurm step's cgroups (--slurm-cgroups):
        // what is in them is the step's, killed as the enclave's apps are.
        if !rec.step_cgroups.is_empty() && node_lock.is_some() {
            let nest = hobbes_cgroups::step_nest::StepNest::from_dirs(&rec.step_cgroups);
            nest.kill_all(hobbes_cgroups::KILL_TIMEOUT)
                .and_then(|()| nest.release())
                .map_err(|e| {
                    anyhow::anyhow!("enclave {}'s cgroups in its Slurm step: {e}", rec.name)
                })?;
        }
        println!("removed enclave {} ({})", rec.id, rec.name);
    }
    if orphans {
        anyhow::ensure!(
            node_lock.is_some() || !privileged,
            "a leviathan runs on this node: its enclaves are not orphans (stop it first)"
        );
        for left in kinds.iter().flat_map(|k| k.leftovers()) {
            let pids = left.pids();
            left.kill_and_remove().map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "removed orphan enclave {} {} (enclave {}, {} processes killed)",
                left.noun(),
                left.location(),
                left.enclave(),
                pids.len()
            );
        }
    }
    if node_lock.is_some() {
        for kind in kinds.iter().rev() {
            kind.teardown().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // The node record names a daemon that is gone; forget it when its
        // enclaves are gone too.
        if NodeRecord::read().is_some_and(|r| r.state_dir == paths.root || orphans) {
            let _ = std::fs::remove_file(super::locks::NODE_RECORD);
        }
    }
    if privileged && super::hugetlb::give_back(&paths.root) {
        println!("gave back the hugetlb pages the daemon had reserved");
    }
    if privileged && super::segment_mount::unmount(&paths.root) {
        println!(
            "unmounted the segment tmpfs {}",
            super::segment_mount::dir(&paths.root).display()
        );
    }
    if !keep_state {
        remove_tree(state_dir);
    }
    Ok(())
}
