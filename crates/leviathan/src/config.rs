//! Daemon configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! host_cores = [0]            # cores the host keeps (default: the first core)
//! host_memory_mib = 4096      # memory the host keeps (default: max(1 GiB, 25%))
//! heartbeat_interval_ms = 1000
//! heartbeat_timeout_ms = 3000 # an enclave silent this long is crashed
//! on_crash = "reclaim"        # or "hold": keep its resources for inspection
//! unprivileged = false        # force the degraded mode even as root
//! keep_enclaves_on_exit = false
//! shmem_thp = false          # shmem THP "advise" while running (XEMEM huge pages)
//! client_idle_timeout_s = 300 # a client connection with no request this long is closed
//! request_timeout_ms = 10000  # a request frame must arrive whole this soon after its first byte
//! max_clients_per_uid = 64    # connections one user may hold (root has its own allowance)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use hobbes_proto::model::CoreId;

/// What to do with a crashed enclave's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnCrash {
    /// Kill what is left, remove its cgroups, return cores and memory.
    Reclaim,
    /// Keep everything as it was until `hobbes destroy-enclave`.
    Hold,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host_cores: Option<Vec<CoreId>>,
    pub host_memory_mib: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub on_crash: Option<OnCrash>,
    pub unprivileged: Option<bool>,
    pub keep_enclaves_on_exit: Option<bool>,
    pub shmem_thp: Option<bool>,
    pub client_idle_timeout_s: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub max_clients_per_uid: Option<usize>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub host_cores: Option<Vec<CoreId>>,
    pub host_memory_mib: Option<u64>,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub on_crash: OnCrash,
    pub unprivileged: bool,
    pub keep_enclaves_on_exit: bool,
    /// Put shmem transparent huge pages in `advise` mode while running, so
    /// XEMEM's allocator gets huge pages (restored at a clean exit).
    pub shmem_thp: bool,
    /// A client connection that sends no request for this long is closed
    /// (clients reconnect transparently).
    pub client_idle_timeout_s: u64,
    /// Once a request frame's first byte arrived, the rest must follow within this.
    pub request_timeout_ms: u64,
    /// Connections one uid may hold at once; root is counted apart, so no
    /// user can lock root (or another user) out.
    pub max_clients_per_uid: usize,
}

/// Defaults for the client limits.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_S: u64 = 300;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_CLIENTS_PER_UID: usize = 64;

impl Config {
    pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

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
pub fn parse_cpu_list(text: &str) -> Result<Vec<CoreId>, String> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let bad = || format!("bad CPU list {text:?}: {part:?} is not N or N-M");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: CoreId = a.trim().parse().map_err(|_| bad())?;
                let b: CoreId = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 65536 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
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
    fn config_file_rejects_unknown_keys() {
        let err = toml::from_str::<FileConfig>("host_core = [0]").unwrap_err();
        assert!(err.to_string().contains("host_core"), "{err}");
        let ok: FileConfig = toml::from_str("host_cores = [0]\non_crash = \"hold\"").unwrap();
        assert_eq!(ok.on_crash, Some(OnCrash::Hold));
    }
}
