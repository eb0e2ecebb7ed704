//! Remora's PMIx service inside leviathan, for Open MPI jobs: one PMIx
//! server per daemon (`hobbes-pmix`, started at the first Open MPI job, its
//! rendezvous files in `<state dir>/pmix`, which enclaves see at the same
//! path), one namespace per job. Its events feed the job's supervisor as the
//! PMI-1 server's do; its fences are mirrored in the Node Information Service
//! (the job's barrier count, and one key per fence saying who took part and
//! how much data they exchanged: PMIx's key/values travel inside the fence's
//! opaque blob).

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use hobbes_nis::NisWriter;
use hobbes_pmix::{AppLayout, Event, JobLayout, Server};

use crate::daemon::remora::JobEvent;

/// Settle, while the process has one thread, what the PMIx server reads from
/// the environment when it starts (later, at the first Open MPI job, when
/// `setenv` would race the daemon's threads): libpmix settles an all-local
/// fence by itself unless told otherwise, and then the daemon never hears of
/// fences, which it mirrors in the NIS.
pub fn prepare_environment() {
    const FENCE_LOCAL_ONLY: &str = "PMIX_MCA_pmix_server_fence_localonly_opt";
    if std::env::var_os(FENCE_LOCAL_ONLY).is_none() {
        std::env::set_var(FENCE_LOCAL_ONLY, "0");
    }
}

/// This daemon's PMIx server, once an Open MPI job needed it.
static SERVER: OnceLock<Result<Arc<Server>, String>> = OnceLock::new();

/// The daemon's PMIx server, started on first use in `state_dir/pmix`.
pub fn server(state_dir: &Path) -> Result<Arc<Server>, String> {
    SERVER
        .get_or_init(|| {
            Server::start(&state_dir.join("pmix")).map_err(|e| {
                format!("cannot start the PMIx server that Open MPI programs need: {e}")
            })
        })
        .clone()
}

/// One Open MPI job's PMIx namespace. Dropping it deregisters the namespace.
pub struct PmixJob {
    server: Arc<Server>,
    nspace: String,
    /// Ranks that connected to the server (`PMIx_Init` reached us).
    connected: Arc<Mutex<HashSet<u32>>>,
}

impl PmixJob {
    /// Register the namespace of Remora job `job_id` (before any rank
    /// starts): applications `apps` (name, first rank, size, argv0, cwd) run
    /// by `uid`/`gid`. Aborts go to `events`; fences are mirrored into `nis`.
    pub fn start(
        server: Arc<Server>,
        nis: Arc<NisWriter>,
        job_id: u64,
        nspace: &str,
        apps: Vec<AppLayout>,
        (uid, gid): (u32, u32),
        events: Sender<JobEvent>,
    ) -> Result<PmixJob, String> {
        let layout = JobLayout {
            nspace: nspace.to_string(),
            apps,
            uid,
            gid,
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
        };
        let (tx, rx) = mpsc::channel();
        server
            .register_job(&layout, tx)
            .map_err(|e| format!("cannot register the job with the PMIx server: {e}"))?;
        let connected = Arc::new(Mutex::new(HashSet::new()));
        {
            let connected = connected.clone();
            let nspace = nspace.to_string();
            std::thread::Builder::new()
                .name("pmix-events".into())
                .spawn(move || {
                    let mut fences = 0u64;
                    // Ends when the namespace is deregistered (its sender dropped).
                    for ev in rx {
                        match ev {
                            Event::Connected { rank } => {
                                connected
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(rank);
                            }
                            Event::Finalized { .. } => {}
                            Event::Aborted {
                                rank,
                                status,
                                message,
                            } => {
                                tracing::info!(job = job_id, rank, status, message, "rank aborted");
                                let _ = events.send(JobEvent::Abort { rank, code: status });
                            }
                            Event::Fence {
                                participants,
                                bytes,
                            } => {
                                fences += 1;
                                mirror_fence(&nis, &nspace, job_id, fences, participants, bytes);
                            }
                        }
                    }
                })
                .map_err(|e| format!("cannot start the PMIx event thread: {e}"))?;
        }
        Ok(PmixJob {
            server,
            nspace: nspace.to_string(),
            connected,
        })
    }

    /// The environment rank `rank` starts with (`PMIX_NAMESPACE`,
    /// `PMIX_RANK`, the server's address, ..., and Open MPI's settings to
    /// use it).
    pub fn env_for_rank(&self, rank: u32) -> Result<Vec<(String, String)>, String> {
        let mut env = self
            .server
            .client_env(&self.nspace, rank)
            .map_err(|e| format!("PMIx set-up of rank {rank}: {e}"))?;
        // What Open MPI needs to use this server rather than start its own.
        env.extend(self.server.open_mpi_env(&self.nspace));
        Ok(env)
    }

    /// Whether rank `rank` connected to the server.
    pub fn connected(&self, rank: u32) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&rank)
    }
}

impl Drop for PmixJob {
    fn drop(&mut self) {
        self.server.deregister_job(&self.nspace);
    }
}

/// A fence in the NIS: the job's barrier count, and a key naming it.
fn mirror_fence(
    nis: &NisWriter,
    nspace: &str,
    job_id: u64,
    n: u64,
    participants: u32,
    bytes: usize,
) {
    let written = nis.update(|t| -> Result<(), hobbes_nis::NisError> {
        t.put_pmi(
            nspace,
            &format!("pmix-fence-{n}"),
            &format!("{participants} ranks, {bytes} bytes"),
        )?;
        if let Some(mut job) = t.job(job_id)? {
            if n > job.barriers {
                job.barriers = n;
                t.put_job(&mut job)?;
            }
        }
        Ok(())
    });
    if let Err(e) = written {
        tracing::warn!(job = job_id, error = %e, "cannot mirror a PMIx fence in the NIS");
    }
}
