//! hobbes-pmix: the PMIx server the node daemon hosts so that unmodified
//! Open MPI 4.1 programs start under Remora instead of `mpirun`.
//!
//! One [`Server`] per process (libpmix allows one). The launcher registers a
//! job ([`Server::register_job`]) before any of its ranks starts, asks for
//! each rank's environment ([`Server::client_env`]), starts the ranks with
//! it, watches the job's [`Event`]s (an [`Event::Aborted`] means: kill the
//! job), and forgets the job when it is over ([`Server::deregister_job`]).
//! Every rank of a job runs on this node.
//!
//! ```no_run
//! use hobbes_pmix::{AppLayout, Event, JobLayout, Server};
//! # fn main() -> Result<(), hobbes_pmix::PmixError> {
//! let server = Server::start(std::path::Path::new("/run/hobbes/pmix"))?;
//! let layout = JobLayout {
//!     nspace: "hobbes.42".into(),
//!     apps: vec![AppLayout { appnum: 0, first_rank: 0, np: 2, argv0: "./hello".into(), cwd: None }],
//!     uid: 1000,
//!     gid: 1000,
//!     hostname: "node0".into(),
//! };
//! let (tx, rx) = std::sync::mpsc::channel();
//! server.register_job(&layout, tx)?;
//! for rank in 0..2 {
//!     let mut cmd = std::process::Command::new("./hello");
//!     cmd.envs(server.open_mpi_env("hobbes.42"));
//!     cmd.envs(server.client_env("hobbes.42", rank)?);
//!     cmd.spawn().expect("spawn");
//! }
//! while let Ok(ev) = rx.recv() {
//!     if let Event::Aborted { status, .. } = ev { /* kill the job, report status */ let _ = status; break; }
//! }
//! server.deregister_job("hobbes.42");
//! # Ok(()) }
//! ```
//!
//! The PMIx structures live in C (`csrc/pmix_glue.c`); `src/ffi.rs` holds
//! the crate's only `unsafe`. See README.md for the keys Open MPI reads and
//! why [`Server::open_mpi_env`] is needed.
#![deny(missing_docs)]
// Without libpmix the FFI stubs never call back, so the event path is unused.
#![cfg_attr(not(hobbes_pmix), allow(dead_code))]

mod ffi;
mod registry;

use registry::{RawEvent, Registry, RegistryError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// The nspace the server itself uses (`PMIX_SERVER_NSPACE`).
pub const SERVER_NSPACE: &str = "hobbes-server";

/// Why a build without libpmix cannot serve.
const NO_LIBPMIX: &str = "hobbes-pmix was built without libpmix (install libpmix-dev and rebuild)";

/// Longest nspace PMIx accepts (`PMIX_MAX_NSLEN`).
const MAX_NSLEN: usize = 255;

/// Longest tmpdir that leaves room for libpmix's rendezvous socket name
/// (`pmix-<pid>`, `pmix.<host>.tool.<pid>`) in a 108-byte `sun_path`.
const MAX_TMPDIR: usize = 64;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum PmixError {
    /// This build has no libpmix, or PMIx cannot run here.
    #[error("PMIx unavailable: {0}")]
    Unavailable(String),
    /// A libpmix call failed.
    #[error("{call} failed: {name} (PMIx status {status})")]
    Call {
        /// The PMIx function, e.g. `PMIx_server_register_nspace`.
        call: &'static str,
        /// Its status code.
        status: i32,
        /// `PMIx_Error_string(status)`.
        name: String,
    },
    /// Anything else (bad layout, unknown job, ...).
    #[error("{0}")]
    Other(String),
}

/// A job whose ranks all run on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLayout {
    /// The PMIx namespace (at most 255 bytes); also given as `PMIX_JOBID`.
    pub nspace: String,
    /// The applications, ranks contiguous: the first starts at rank 0, each
    /// next one at the previous `first_rank + np`.
    pub apps: Vec<AppLayout>,
    /// Uid the ranks run as (libpmix checks it on connect).
    pub uid: u32,
    /// Gid the ranks run as.
    pub gid: u32,
    /// This node's name (`PMIX_HOSTNAME`, the node map).
    pub hostname: String,
}

/// One application (MPMD part) of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLayout {
    /// `PMIX_APPNUM` (MPI_APPNUM).
    pub appnum: u32,
    /// Its first rank in the job.
    pub first_rank: u32,
    /// Its number of ranks (> 0).
    pub np: u32,
    /// Its program (`PMIX_APP_ARGV`).
    pub argv0: String,
    /// Its working directory (`PMIX_WDIR`), if known.
    pub cwd: Option<String>,
}

/// What a job's ranks did, as libpmix told the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The rank connected (inside `MPI_Init`).
    Connected {
        /// Its rank.
        rank: u32,
    },
    /// The rank called `PMIx_Finalize` (inside `MPI_Finalize`).
    Finalized {
        /// Its rank.
        rank: u32,
    },
    /// The rank called `MPI_Abort`/`PMIx_Abort`: the host must kill the job.
    Aborted {
        /// Its rank.
        rank: u32,
        /// The error code it gave.
        status: i32,
        /// Its message.
        message: String,
    },
    /// A fence completed on this node (one report per fence, not per rank).
    Fence {
        /// How many ranks took part.
        participants: u32,
        /// Bytes of modex data the ranks contributed.
        bytes: usize,
    },
}

/// This process's PMIx server.
#[derive(Debug)]
pub struct Server {
    tmpdir: PathBuf,
}

/// None: never started; a live Weak: running; a dead Weak: finalized for
/// good (the last [`Arc`] finalizes libpmix, which cannot start again).
static SERVER: Mutex<Option<Weak<Server>>> = Mutex::new(None);
/// The jobs, reachable from libpmix's progress thread.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry::new());

/// Lock ignoring poison: the registry stays consistent (each operation is
/// one map update), and the progress thread must never panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Called by [`ffi`] on libpmix's progress thread.
pub(crate) fn dispatch(ev: RawEvent) {
    lock(&REGISTRY).dispatch(ev);
}

impl Server {
    /// Start this process's PMIx server; its rendezvous files go in
    /// `tmpdir` (made if missing, mode 0755), which clients must see at the
    /// same path.
    ///
    /// A second call while the first server lives returns the same [`Arc`]
    /// when `tmpdir` is the same, and an error naming the running one's
    /// otherwise. When the last `Arc` is dropped the server is finalized
    /// (its rendezvous files removed), and it cannot start again in this
    /// process: libpmix 4.2 aborts the process on a second
    /// `PMIx_server_init` after `PMIx_server_finalize` (seen here), so a
    /// later `start` returns [`PmixError::Unavailable`]. Keep one handle for
    /// the daemon's lifetime.
    ///
    /// Call it early, before threads that read the environment run: it sets
    /// `PMIX_MCA_pmix_server_fence_localonly_opt=0` in this process's
    /// environment (unless already set) so that libpmix reports every fence
    /// (see README.md). Each job gets a session directory
    /// `tmpdir/<nspace>` ([`Server::job_dir`]); keep `tmpdir` on a tmpfs
    /// (`/run/...`) since [`Server::open_mpi_env`] puts Open MPI's
    /// shared-memory segments there.
    pub fn start(tmpdir: &Path) -> Result<Arc<Server>, PmixError> {
        let mut slot = lock(&SERVER);
        if let Some(weak) = slot.as_ref() {
            let Some(running) = weak.upgrade() else {
                return Err(PmixError::Unavailable(
                    "this process's PMIx server was finalized (its last handle dropped); \
                     libpmix 4.2 cannot be initialized again in the same process"
                        .to_string(),
                ));
            };
            if running.tmpdir == tmpdir {
                return Ok(running);
            }
            return Err(PmixError::Other(format!(
                "a PMIx server already runs in this process with tmpdir {} (asked for {}); \
                 libpmix allows one",
                running.tmpdir.display(),
                tmpdir.display()
            )));
        }
        if !Self::available() {
            return Err(PmixError::Unavailable(NO_LIBPMIX.to_string()));
        }
        check_tmpdir(tmpdir)?;
        make_dir(tmpdir)?;
        ffi::init(tmpdir, SERVER_NSPACE)?;
        let server = Arc::new(Server {
            tmpdir: tmpdir.to_path_buf(),
        });
        *slot = Some(Arc::downgrade(&server));
        Ok(server)
    }

    /// The directory given to [`Server::start`].
    pub fn tmpdir(&self) -> &Path {
        &self.tmpdir
    }

    /// Register job `layout` (all ranks on this node) before any of its
    /// ranks starts; its events go to `events`. Also makes the job's session
    /// directory ([`Server::job_dir`], owned by the job's uid/gid, mode 0700).
    pub fn register_job(&self, layout: &JobLayout, events: Sender<Event>) -> Result<(), PmixError> {
        let size = validate(layout)?;
        let nsdir = self.job_dir(&layout.nspace);
        lock(&REGISTRY)
            .insert(&layout.nspace, size, (layout.uid, layout.gid), events)
            .map_err(|_| {
                PmixError::Other(format!("job {} is already registered", layout.nspace))
            })?;
        let apps: Vec<ffi::AppSpec<'_>> = layout
            .apps
            .iter()
            .map(|a| ffi::AppSpec {
                appnum: a.appnum,
                first_rank: a.first_rank,
                np: a.np,
                argv0: &a.argv0,
                cwd: a.cwd.as_deref(),
            })
            .collect();
        // The registry lock is not held here: libpmix's progress thread may
        // need it to report events while this call waits for that thread.
        make_job_dir(&nsdir, layout.uid, layout.gid)
            .and_then(|()| {
                ffi::register_nspace(
                    &layout.nspace,
                    &layout.hostname,
                    &self.tmpdir,
                    &nsdir,
                    &apps,
                )
            })
            .inspect_err(|_| {
                lock(&REGISTRY).remove(&layout.nspace);
                let _ = std::fs::remove_dir_all(&nsdir);
            })
    }

    /// The session directory of job `nspace`: `tmpdir/<nspace>`, given to
    /// the ranks as `PMIX_NSDIR` (Open MPI keeps its per-job files there
    /// instead of `/tmp/ompi.<host>.<uid>`); removed by
    /// [`Server::deregister_job`].
    pub fn job_dir(&self, nspace: &str) -> PathBuf {
        self.tmpdir.join(nspace)
    }

    /// Open MPI 4.1 settings a rank of `nspace` needs besides
    /// [`Server::client_env`]'s, as (name, value):
    ///
    /// - `OMPI_MCA_schizo=^orte`, `OMPI_MCA_ess=pmi`: without them Open MPI
    ///   4.1 sees no `mpirun` daemon (no `OMPI_MCA_orte_local_daemon_uri`)
    ///   and no Slurm/Flux/LSF, declares itself a singleton, forks its own
    ///   `orted` and runs as a 1-rank job, never talking to this server.
    /// - `OMPI_MCA_btl_vader_backing_directory=<job dir>`: the shared-memory
    ///   segments go in the job directory instead of `/dev/shm`, so they
    ///   are removed with it even when ranks are killed (after an abort).
    pub fn open_mpi_env(&self, nspace: &str) -> Vec<(String, String)> {
        vec![
            ("OMPI_MCA_schizo".into(), "^orte".into()),
            ("OMPI_MCA_ess".into(), "pmi".into()),
            (
                "OMPI_MCA_btl_vader_backing_directory".into(),
                self.job_dir(nspace).display().to_string(),
            ),
        ]
    }

    /// Register rank `rank` of `nspace` as a client (the job's uid/gid) and
    /// return the environment variables it must be started with: exactly
    /// those `PMIx_server_setup_fork` adds (`PMIX_NAMESPACE`, `PMIX_RANK`,
    /// `PMIX_SERVER_URI*`, `PMIX_SECURITY_MODE`, ...), as (name, value).
    /// Calling it again for the same rank does not register it twice.
    pub fn client_env(&self, nspace: &str, rank: u32) -> Result<Vec<(String, String)>, PmixError> {
        let owner = lock(&REGISTRY)
            .needs_client(nspace, rank)
            .map_err(|e| match e {
                RegistryError::UnknownJob | RegistryError::Duplicate => {
                    PmixError::Other(format!("job {nspace} is not registered"))
                }
                RegistryError::RankOutOfRange { size } => PmixError::Other(format!(
                    "rank {rank} is outside job {nspace} of {size} ranks"
                )),
            })?;
        if let Some((uid, gid)) = owner {
            ffi::register_client(nspace, rank, uid, gid)?;
            lock(&REGISTRY).mark_client(nspace, rank);
        }
        Ok(parse_env(ffi::setup_fork(nspace, rank)?))
    }

    /// Forget a job: deregister its clients and namespace; later events for
    /// it are dropped. Unknown jobs are ignored.
    pub fn deregister_job(&self, nspace: &str) {
        let Some(clients) = lock(&REGISTRY).remove(nspace) else {
            return;
        };
        // Best effort: libpmix has nothing to report that the caller could act on.
        for rank in clients {
            let _ = ffi::deregister_client(nspace, rank);
        }
        let _ = ffi::deregister_nspace(nspace);
        let _ = std::fs::remove_dir_all(self.job_dir(nspace));
    }

    /// Whether this build has libpmix (false: every call returns
    /// [`PmixError::Unavailable`]).
    pub fn available() -> bool {
        ffi::AVAILABLE
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Runs when the last Arc goes, under no lock of ours; a concurrent
        // `start` either still upgraded this one or finds the slot dead.
        let _ = ffi::finalize();
    }
}

/// Check a layout; returns the job size.
fn validate(layout: &JobLayout) -> Result<u32, PmixError> {
    let bad = |why: String| Err(PmixError::Other(format!("job {:?}: {why}", layout.nspace)));
    if layout.nspace.is_empty() || layout.nspace.len() > MAX_NSLEN {
        return bad(format!("nspace must be 1 to {MAX_NSLEN} bytes"));
    }
    // It names the job's directory under tmpdir.
    if layout.nspace.contains(['/', '\0']) || layout.nspace == "." || layout.nspace == ".." {
        return bad("nspace must be usable as a file name (no '/', NUL, '.' or '..')".to_string());
    }
    if layout.apps.is_empty() {
        return bad("has no applications".to_string());
    }
    let mut next = 0u32;
    for (i, app) in layout.apps.iter().enumerate() {
        if app.np == 0 {
            return bad(format!("app {i} has no ranks"));
        }
        if app.first_rank != next {
            return bad(format!(
                "app {i} starts at rank {} but ranks must be contiguous (expected {next})",
                app.first_rank
            ));
        }
        next = match next.checked_add(app.np) {
            Some(n) => n,
            None => return bad("too many ranks".to_string()),
        };
    }
    // PMIX_LOCAL_RANK and PMIX_NODE_RANK are 16 bits.
    if next > u32::from(u16::MAX) {
        return bad(format!("{next} ranks on one node exceed {}", u16::MAX));
    }
    Ok(next)
}

/// The tmpdir must be absolute and short enough for a Unix socket path.
fn check_tmpdir(tmpdir: &Path) -> Result<(), PmixError> {
    if !tmpdir.is_absolute() {
        return Err(PmixError::Other(format!(
            "PMIx tmpdir {} must be absolute (clients find the server through it)",
            tmpdir.display()
        )));
    }
    if tmpdir.as_os_str().len() > MAX_TMPDIR {
        return Err(PmixError::Other(format!(
            "PMIx tmpdir {} is longer than {MAX_TMPDIR} bytes: libpmix's socket path would \
             not fit in sun_path",
            tmpdir.display()
        )));
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), PmixError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| PmixError::Other(format!("cannot create PMIx tmpdir {}: {e}", dir.display())))
}

/// Make a job's session directory afresh (a stale one from a crashed run is
/// replaced), owned by the job's uid/gid, mode 0700.
fn make_job_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), PmixError> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |what: &str, e: std::io::Error| {
        PmixError::Other(format!(
            "cannot {what} job directory {}: {e}",
            dir.display()
        ))
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| fail("remove the stale", e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("create", e))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| fail("chown", e))
}

/// `NAME=VALUE` strings to pairs; entries without `=` or with an empty name
/// are dropped, the value keeps any further `=`.
fn parse_env(entries: Vec<String>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(first_rank: u32, np: u32) -> AppLayout {
        AppLayout {
            appnum: 0,
            first_rank,
            np,
            argv0: "a".into(),
            cwd: None,
        }
    }

    fn job(apps: Vec<AppLayout>) -> JobLayout {
        JobLayout {
            nspace: "ns".into(),
            apps,
            uid: 0,
            gid: 0,
            hostname: "h".into(),
        }
    }

    #[test]
    fn env_entries_split_at_first_equals() {
        let env = parse_env(vec![
            "PMIX_NAMESPACE=ns".into(),
            "PMIX_SERVER_URI4=hobbes-server.0;tcp4://127.0.0.1:1=2".into(),
            "EMPTY=".into(),
            "NOEQUALS".into(),
            "=novalue".into(),
        ]);
        assert_eq!(
            env,
            vec![
                ("PMIX_NAMESPACE".into(), "ns".into()),
                (
                    "PMIX_SERVER_URI4".into(),
                    "hobbes-server.0;tcp4://127.0.0.1:1=2".into()
                ),
                ("EMPTY".into(), String::new()),
            ]
        );
    }

    #[test]
    fn contiguous_apps_give_the_job_size() {
        assert_eq!(validate(&job(vec![app(0, 2), app(2, 3)])).unwrap(), 5);
    }

    #[test]
    fn gaps_empty_apps_and_bad_nspaces_are_refused() {
        assert!(validate(&job(vec![app(1, 2)])).is_err());
        assert!(validate(&job(vec![app(0, 2), app(3, 1)])).is_err());
        assert!(validate(&job(vec![app(0, 0)])).is_err());
        assert!(validate(&job(vec![])).is_err());
        let mut long = job(vec![app(0, 1)]);
        long.nspace = "x".repeat(256);
        assert!(validate(&long).is_err());
        for bad in ["a/b", "..", "."] {
            let mut j = job(vec![app(0, 1)]);
            j.nspace = bad.into();
            assert!(validate(&j).is_err(), "{bad}");
        }
        let e = validate(&job(vec![app(0, 70000)])).unwrap_err();
        assert!(e.to_string().contains("65535"), "{e}");
    }

    #[test]
    fn tmpdir_must_be_absolute_and_short() {
        assert!(check_tmpdir(Path::new("relative")).is_err());
        assert!(check_tmpdir(&Path::new("/").join("d".repeat(80))).is_err());
        assert!(check_tmpdir(Path::new("/tmp/x")).is_ok());
    }

    #[test]
    fn call_error_names_the_call_and_the_status() {
        let e = PmixError::Call {
            call: "PMIx_server_init",
            status: -47,
            name: "PMIX_ERR_NOT_SUPPORTED".into(),
        };
        assert_eq!(
            e.to_string(),
            "PMIx_server_init failed: PMIX_ERR_NOT_SUPPORTED (PMIx status -47)"
        );
    }

    #[test]
    fn unavailable_build_says_so() {
        if Server::available() {
            return;
        }
        let e = Server::start(Path::new("/tmp/hobbes-pmix-x")).unwrap_err();
        assert!(matches!(e, PmixError::Unavailable(_)), "{e}");
    }
}
