//! Daemon configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! cpus = "4-15"               # cores this daemon manages (default: every online core)
//! memory = "16G"              # memory it manages, MiB or with M/G (default: all of it)
//! # memory_blocks = "96-127"  # or these memory blocks (exclusive with `memory`)
//! host_cores = [4]            # cores the host keeps (default: the first managed core)
//! host_memory_mib = 4096      # memory the host keeps (default: max(1 GiB, 25%);
//!                             # 25% of the managed memory when managing a subset)
//! heartbeat_interval_ms = 1000
//! heartbeat_timeout_ms = 3000 # an enclave silent this long is crashed
//! on_crash = "reclaim"        # or "hold": keep its resources for inspection
//! unprivileged = false        # force the degraded mode even as root
//! keep_enclaves_on_exit = false
//! shmem_thp = false          # shmem THP "advise" while running (XEMEM huge pages)
//! hugepages = 0               # hugetlb pages to reserve while running (XEMEM segments)
//! client_idle_timeout_s = 300 # a client connection with no request this long is closed
//! request_timeout_ms = 10000  # a request frame must arrive whole this soon after its first byte
//! max_clients_per_uid = 64    # connections one user may hold (root has its own allowance)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use hobbes_proto::model::{BlockId, CoreId};

/// What to do with a crashed enclave's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnCrash {
    /// Kill what is left, remove its cgroups, return cores and memory.
    Reclaim,
    /// Keep everything as it was until `hobbes destroy-enclave`.
    Hold,
}

/// The memory a daemon manages when it manages part of the node
/// (`--memory`, `--memory-blocks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedMemory {
    /// This many MiB, rounded up to whole memory blocks, taken from the
    /// highest-numbered blocks on the NUMA nodes of the managed cores
    /// ([`crate::resources::managed_share`]).
    Mib(u64),
    /// Exactly these memory blocks (ids as `hobbes list-memory` shows them),
    /// sorted; for disjoint daemons on one node.
    Blocks(Vec<BlockId>),
}

/// A CPU or block list in the configuration file: `"4-15"` or `[4, 5]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdListValue {
    /// An array of ids.
    Ids(Vec<u32>),
    /// A Linux-style list ("0,2-3").
    Text(String),
}

impl IdListValue {
    /// The ids, sorted and without duplicates.
    pub fn resolve(&self) -> Result<Vec<u32>, String> {
        match self {
            IdListValue::Ids(ids) => {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                Ok(ids)
            }
            IdListValue::Text(text) => parse_cpu_list(text),
        }
    }
}

/// A memory size in the configuration file: MiB (`2048`) or text (`"2G"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// MiB.
    Mib(u64),
    /// With a unit, as [`parse_size_mib`] reads it.
    Text(String),
}

impl SizeValue {
    /// The size in MiB.
    pub fn resolve(&self) -> Result<u64, String> {
        match self {
            SizeValue::Mib(0) => Err("the size must be more than 0".into()),
            SizeValue::Mib(m) => Ok(*m),
            SizeValue::Text(t) => parse_size_mib(t),
        }
    }
}

/// The configuration file as read by [`Config::load_file`]: every key is
/// optional, and a key left out falls back to the command-line flag or the
/// built-in default when `leviathan`'s `main` builds the [`Config`]. Unknown keys
/// are refused, so a misspelt key is an error instead of a silently ignored setting.
/// The meaning of each key is that of the [`Config`] field of the same name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::cpus`]; a `--cpus` flag wins over it.
    pub cpus: Option<IdListValue>,
    /// See [`Config::memory`] (as [`ManagedMemory::Mib`]); exclusive with
    /// `memory_blocks`; a `--memory` or `--memory-blocks` flag wins over it.
    pub memory: Option<SizeValue>,
    /// See [`Config::memory`] (as [`ManagedMemory::Blocks`]).
    pub memory_blocks: Option<IdListValue>,
    /// See [`Config::host_cores`]; a `--host-cores` flag wins over it.
    pub host_cores: Option<Vec<CoreId>>,
    /// See [`Config::host_memory_mib`]; a `--host-memory` flag wins over it.
    pub host_memory_mib: Option<u64>,
    /// See [`Config::heartbeat_interval_ms`] (default 1000).
    pub heartbeat_interval_ms: Option<u64>,
    /// See [`Config::heartbeat_timeout_ms`] (default 3000).
    pub heartbeat_timeout_ms: Option<u64>,
    /// See [`Config::on_crash`] (default [`OnCrash::Reclaim`]).
    pub on_crash: Option<OnCrash>,
    /// See [`Config::unprivileged`]; `true` here or the flag makes it true.
    pub unprivileged: Option<bool>,
    /// See [`Config::keep_enclaves_on_exit`]; `true` here or `--keep-enclaves` makes it true.
    pub keep_enclaves_on_exit: Option<bool>,
    /// See [`Config::shmem_thp`]; `true` here or the flag makes it true.
    pub shmem_thp: Option<bool>,
    /// See [`Config::slurm_cgroups`]; `true` here or the flag makes it true.
    pub slurm_cgroups: Option<bool>,
    /// See [`Config::hugepages`]; a `--hugepages` flag wins over it.
    pub hugepages: Option<u64>,
    /// See [`Config::client_idle_timeout_s`] (default [`DEFAULT_CLIENT_IDLE_TIMEOUT_S`]).
    pub client_idle_timeout_s: Option<u64>,
    /// See [`Config::request_timeout_ms`] (default [`DEFAULT_REQUEST_TIMEOUT_MS`]).
    pub request_timeout_ms: Option<u64>,
    /// See [`Config::max_clients_per_uid`] (default [`DEFAULT_MAX_CLIENTS_PER_UID`]).
    pub max_clients_per_uid: Option<usize>,
}

/// The resolved configuration: flags over the [`FileConfig`] over the defaults,
/// as `leviathan`'s `main` builds it (a test running the daemon in-process,
/// such as `tests/fake_kind.rs`, builds one directly). The daemon checks it with [`Config::validate`] before it touches
/// the node ([`crate::daemon::run_with`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory: client and control sockets, pid file, the NIS
    /// (`<state>/nis`), per-enclave and per-app directories. Default
    /// `/run/hobbes` for root, else `$XDG_RUNTIME_DIR/hobbes` or `/tmp/hobbes-<uid>`.
    pub state_dir: PathBuf,
    /// The cores this daemon manages (sorted): only they are in its
    /// inventory, NIS and listings. `None`: every online core (an
    /// unprivileged daemon: those of its CPU affinity). Every core must be
    /// online (and, unprivileged, in the affinity). Like `memory`, fixed
    /// when the state directory is created: a restart that asks for another
    /// subset is refused ([`crate::resources::managed_share`]).
    pub cpus: Option<Vec<CoreId>>,
    /// The memory this daemon manages; `None`: every online memory block.
    pub memory: Option<ManagedMemory>,
    /// Cores the host keeps (core ids as in the NIS); every other managed
    /// core is free for enclaves. `None`: the first managed core. Must be
    /// among the managed cores. Applies only when the inventory is taken,
    /// i.e. to a fresh state directory; a restart keeps the recorded split
    /// (and warns that the setting was ignored). A core that does not exist is
    /// an error at start ([`crate::resources::host_share`]).
    pub host_cores: Option<Vec<CoreId>>,
    /// Memory the host keeps, in MiB, taken from the first managed memory
    /// blocks. `None`: a quarter of the node, at least 1 GiB; a quarter of
    /// the managed memory when `cpus` or `memory` names a subset. Must leave
    /// at least one block to enclaves. Like `host_cores`, only for a fresh
    /// state directory.
    pub host_memory_mib: Option<u64>,
    /// How often control processes send a heartbeat, in milliseconds (at least
    /// 10; the default 1000). Sent to each control process in its `welcome`.
    pub heartbeat_interval_ms: u64,
    /// An enclave whose control process is silent this long, in milliseconds,
    /// is marked `crashed` (a dropped link marks it at once). At least twice
    /// `heartbeat_interval_ms`; the default 3000.
    pub heartbeat_timeout_ms: u64,
    /// What happens to a crashed enclave's processes, cgroups and resources.
    pub on_crash: OnCrash,
    /// Run in the degraded mode (no cgroups, no namespaces, affinity only) even
    /// as root. A daemon that is not root is unprivileged whatever this says.
    pub unprivileged: bool,
    /// At a clean stop (SIGTERM or SIGINT), leave the enclaves and their apps running and
    /// the host confinement in place, so that a restarted daemon on the same
    /// state directory reattaches them; otherwise a stop destroys every enclave.
    pub keep_enclaves_on_exit: bool,
    /// Put shmem transparent huge pages in `advise` mode while running, so
    /// XEMEM's allocator gets huge pages (restored at a clean exit).
    pub shmem_thp: bool,
    /// Slurm confines this node's jobs in cgroups of its own
    /// (`TaskPlugin=task/cgroup`, cgroup v1): the daemon's cpusets are not
    /// cpu-exclusive (v1 would refuse Slurm's), and an enclave made for a
    /// Slurm step takes its cores from the step's allocation and nests in
    /// the step's cgroups, inside the job's limits (docs/slurm.md).
    pub slurm_cgroups: bool,
    /// Default-size hugetlb pages to add to the node's reserve
    /// (`vm.nr_hugepages`) for as long as the daemon runs (root; 0: none).
    /// XEMEM's `alloc` takes them first. Given back at a clean exit, or by
    /// `leviathan cleanup` after a crash.
    pub hugepages: u64,
    /// A client connection that sends no request for this long is closed
    /// (clients reconnect transparently).
    pub client_idle_timeout_s: u64,
    /// Once a request frame's first byte arrived, the rest must follow within this.
    pub request_timeout_ms: u64,
    /// Connections one uid may hold at once; root is counted apart, so no
    /// user can lock root (or another user) out.
    pub max_clients_per_uid: usize,
}

/// Default of [`Config::client_idle_timeout_s`]: 300 s (protocol.md §7).
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_S: u64 = 300;
/// Default of [`Config::request_timeout_ms`]: 10 s (protocol.md §7).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default of [`Config::max_clients_per_uid`]: 64 connections (protocol.md §7).
pub const DEFAULT_MAX_CLIENTS_PER_UID: usize = 64;

impl Config {
    /// True when the daemon was asked to manage part of the node
    /// (`--cpus`, `--memory` or `--memory-blocks`).
    pub fn subset(&self) -> bool {
        self.cpus.is_some() || self.memory.is_some()
    }

    /// Read and parse the TOML configuration file at `path` (the `--config`
    /// flag). Errors name the path: unreadable file, bad TOML, an unknown key
    /// or a value of the wrong type. Values are not range-checked here; that is
    /// [`Config::validate`]'s job once flags and defaults are merged.
    pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Check the ranges the daemon relies on: heartbeat interval at least
    /// 10 ms and timeout at least twice the interval, client idle timeout at
    /// least 1 s, request timeout at least 10 ms, 1 to 4096 clients per uid.
    /// The error says which value is wrong; the daemon calls this first at
    /// start and refuses to start on an error.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.heartbeat_interval_ms >= 10,
            "heartbeat interval {} ms is below the 10 ms minimum",
            self.heartbeat_interval_ms
        );
        anyhow::ensure!(
            self.heartbeat_timeout_ms >= 2 * self.heartbeat_interval_ms,
            "heartbeat timeout ({} ms) must be at least twice the interval ({} ms)",
            self.heartbeat_timeout_ms,
            self.heartbeat_interval_ms
        );
        anyhow::ensure!(
            self.client_idle_timeout_s >= 1,
            "client idle timeout must be at least 1 s"
        );
        anyhow::ensure!(
            self.request_timeout_ms >= 10,
            "request timeout {} ms is below the 10 ms minimum",
            self.request_timeout_ms
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.max_clients_per_uid),
            "max clients per uid must be 1 to 4096, got {}",
            self.max_clients_per_uid
        );
        Ok(())
    }
}

/// Parse a Linux-style CPU list: "0", "0-3", "0,2,4-5".
pub use hobbes_proto::model::parse_id_list as parse_cpu_list;

/// A memory size in MiB, as the shell reads it ("512", "1G").
pub use hobbes_proto::spec::parse_size_mib;

/// The managed memory of flags over the file: a `--memory` or
/// `--memory-blocks` flag wins over both keys; the file may not name both.
pub fn managed_memory(
    flag_mib: Option<u64>,
    flag_blocks: Option<Vec<BlockId>>,
    file: &FileConfig,
) -> anyhow::Result<Option<ManagedMemory>> {
    anyhow::ensure!(
        flag_mib.is_none() || flag_blocks.is_none(),
        "--memory and --memory-blocks are exclusive: give the amount or the blocks"
    );
    if let Some(m) = flag_mib {
        return Ok(Some(ManagedMemory::Mib(m)));
    }
    if let Some(b) = flag_blocks {
        return Ok(Some(ManagedMemory::Blocks(b)));
    }
    match (&file.memory, &file.memory_blocks) {
        (Some(_), Some(_)) => anyhow::bail!(
            "config: `memory` and `memory_blocks` are exclusive: give the amount or the blocks"
        ),
        (Some(m), None) => Ok(Some(ManagedMemory::Mib(
            m.resolve()
                .map_err(|e| anyhow::anyhow!("config: memory: {e}"))?,
        ))),
        (None, Some(b)) => {
            Ok(Some(ManagedMemory::Blocks(b.resolve().map_err(|e| {
                anyhow::anyhow!("config: memory_blocks: {e}")
            })?)))
        }
        (None, None) => Ok(None),
    }
}

/// Format cores as a compact Linux CPU list ("0-2,5").
pub use hobbes_kind::format_cpu_list;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(parse_cpu_list("0-2,5, 7").unwrap(), vec![0, 1, 2, 5, 7]);
        assert_eq!(format_cpu_list(&[5, 0, 1, 2, 7]), "0-2,5,7");
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn sizes_take_m_and_g_suffixes() {
        assert_eq!(parse_size_mib("2048"), Ok(2048));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("1GiB"), Ok(1024));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size_mib("G").is_err());
    }

    #[test]
    fn subset_keys_parse_as_lists_or_text_and_flags_win() {
        let f: FileConfig =
            toml::from_str("cpus = \"4-6\"\nmemory = \"2G\"\nhost_cores = [4]").unwrap();
        assert_eq!(f.cpus.unwrap().resolve().unwrap(), vec![4, 5, 6]);
        let f: FileConfig = toml::from_str("cpus = [7, 5, 5]\nmemory = 512").unwrap();
        assert_eq!(f.cpus.as_ref().unwrap().resolve().unwrap(), vec![5, 7]);
        assert_eq!(
            managed_memory(None, None, &f).unwrap(),
            Some(ManagedMemory::Mib(512))
        );
        assert_eq!(
            managed_memory(None, Some(vec![3, 4]), &f).unwrap(),
            Some(ManagedMemory::Blocks(vec![3, 4])),
            "a flag wins over the file"
        );
        let f: FileConfig = toml::from_str("memory_blocks = \"10-11\"").unwrap();
        assert_eq!(
            managed_memory(None, None, &f).unwrap(),
            Some(ManagedMemory::Blocks(vec![10, 11]))
        );
        let both: FileConfig = toml::from_str("memory = \"1G\"\nmemory_blocks = [1]").unwrap();
        let err = managed_memory(None, None, &both).unwrap_err().to_string();
        assert!(err.contains("exclusive"), "{err}");
        let err = managed_memory(Some(1), Some(vec![1]), &FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--memory and --memory-blocks"), "{err}");
        let bad: FileConfig = toml::from_str("memory = \"2X\"").unwrap();
        let err = managed_memory(None, None, &bad).unwrap_err().to_string();
        assert!(err.contains("config: memory: unknown unit"), "{err}");
        assert_eq!(
            managed_memory(None, None, &FileConfig::default()).unwrap(),
            None
        );
    }

    #[test]
    fn config_file_rejects_unknown_keys() {
        let err = toml::from_str::<FileConfig>("host_core = [0]").unwrap_err();
        assert!(err.to_string().contains("host_core"), "{err}");
        let ok: FileConfig = toml::from_str("host_cores = [0]\non_crash = \"hold\"").unwrap();
        assert_eq!(ok.on_crash, Some(OnCrash::Hold));
    }
}
