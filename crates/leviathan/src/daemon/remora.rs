//! Remora jobs: one PMI job spanning every application of a composition,
//! each rank a Leviathan app started through its enclave's control process.
//!
//! The connection that launched a job supervises it: it multiplexes the
//! ranks' output, kills the whole job on the first abnormal end (MPI_Abort,
//! a non-zero exit, a crash) or when the launcher goes away (as mpiexec
//! does), and answers with the job's final record.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use hobbes_proto::frame::{write_frame, FrameError};
use hobbes_proto::model::{
    AppRecord, EnclaveRecord, EnclaveState, ExitStatus, JobAppRecord, JobRecord, JobState,
};
use hobbes_proto::mpi_env::{self, RankSpan};
use hobbes_proto::msg::{ErrorCode, JobId, JobSpec, LaunchSpec, MpiFlavor, PmiMode, Response};

use super::apps::{AppEvent, Subscription};
use super::enclaves::TxError;
use super::{internal, now_ms, refuse, Daemon, Refusal};
use crate::sys::PeerCred;

/// The daemon acting on its own behalf (killing a failed job's ranks).
const AS_DAEMON: PeerCred = PeerCred {
    pid: 0,
    uid: 0,
    gid: 0,
};

/// Most processes in one job.
const MAX_JOB_RANKS: u32 = 4096;
/// Ranks launched at once: their launch commands are in flight together, so
/// the control process starts one while the daemon records the previous one.
const PARALLEL_LAUNCHES: usize = 8;

/// What the supervisor hears: the supervisor is the thread serving the
/// `remora_launch` connection, which streams the job to its client and ends the
/// job at the first failure. Sent by the rank forwarders (apps' events) and by
/// the PMI service ([`crate::pmi::PmiJob`]).
pub enum JobEvent {
    /// Something happened to a rank's app: output to forward, output dropped
    /// for a slow client, or its end (a non-zero exit fails the job).
    Output {
        /// The rank, numbered across the job's applications (0 to size - 1).
        rank: u32,
        /// What the app's subscription delivered.
        event: AppEvent,
    },
    /// A rank called `PMI_Abort`: the job ends `aborted` and its ranks are killed.
    Abort {
        /// The rank that aborted.
        rank: u32,
        /// The exit code it passed to `PMI_Abort`.
        code: i32,
    },
    /// A PMI client broke the protocol; logged, the job goes on.
    PmiError {
        /// The rank whose connection failed, or `None` for a connection that
        /// never said which rank it was.
        rank: Option<u32>,
        /// What the PMI server found wrong.
        message: String,
    },
}

/// The supervisor's event channel.
pub struct Events {
    tx: mpsc::Sender<JobEvent>,
    rx: mpsc::Receiver<JobEvent>,
}

/// A job's live parts (the record itself is in the NIS).
pub struct LiveJob {
    owner_uid: u32,
    /// The Leviathan app of each rank.
    ranks: Vec<u64>,
    /// A signal sent to the job (Ctrl-C...): its end is then "killed".
    signalled: Mutex<Option<i32>>,
    pmi: JobPmi,
    /// Per rank: its program is known to be an MPI program (`JobApp::mpi`),
    /// so it must connect to the job's PMI server before it ends.
    must_connect: Vec<bool>,
}

/// A job's PMI service: PMI-1 for MPICH programs, PMIx for Open MPI's.
enum JobPmi {
    Simple(crate::pmi::PmiJob),
    Pmix(crate::pmix::PmixJob),
}

impl JobPmi {
    fn name(&self) -> &'static str {
        match self {
            JobPmi::Simple(_) => "PMI-1",
            JobPmi::Pmix(_) => "PMIx",
        }
    }

    fn env_for_rank(&self, rank: u32) -> Result<Vec<(String, String)>, Refusal> {
        match self {
            JobPmi::Simple(p) => Ok(p.env_for_rank(rank)),
            JobPmi::Pmix(p) => p.env_for_rank(rank).map_err(internal),
        }
    }

    fn child_end(&self, rank: u32) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        match self {
            JobPmi::Simple(p) => p.child_end(rank),
            JobPmi::Pmix(_) => Ok(None),
        }
    }

    fn spawned(&self, rank: u32) {
        if let JobPmi::Simple(p) = self {
            p.spawned(rank)
        }
    }

    fn close_mirror(&self) {
        if let JobPmi::Simple(p) = self {
            p.close_mirror()
        }
    }

    fn connected(&self, rank: u32) -> bool {
        match self {
            JobPmi::Simple(p) => p.connected(rank),
            JobPmi::Pmix(p) => p.connected(rank),
        }
    }
}

/// The Remora service's own state: the jobs still running (their records are
/// in the NIS), behind one lock that is never held while calling out.
#[derive(Default)]
pub struct Jobs {
    running: Mutex<HashMap<JobId, Arc<LiveJob>>>,
}

impl Jobs {
    /// No job running.
    pub fn new() -> Jobs {
        Jobs::default()
    }

    /// Job `id` has started.
    fn insert(&self, id: JobId, job: LiveJob) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(job));
    }

    /// Running job `id`.
    fn get(&self, id: JobId) -> Option<Arc<LiveJob>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Job `id` has ended: its live parts, if it was running.
    fn remove(&self, id: JobId) -> Option<Arc<LiveJob>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }
}

/// The node's hardware topology as hwloc XML, exported once per daemon
/// (`lstopo`), for every MPI rank to load instead of discovering it again.
/// Discovery is the largest part of an MPICH process's start-up here: hwloc
/// reads sysfs and the PCI configuration space of every device, and dlopens
/// its GL/OpenCL/libxml2 plugins (X11, ICU, libstdc++), about 12 of the
/// 26 ms of CPU a hello world takes. Newer hydras share one topology with
/// their ranks the same way.
static TOPOLOGY: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Export the topology for MPI ranks, at start-up: before the daemon confines
/// itself to the host's cores, so hwloc reads every core's own details.
pub fn init_topology(state_dir: &Path) {
    TOPOLOGY.get_or_init(|| export_topology(&state_dir.join("hwloc-topology.xml")));
}

/// Export the topology to `path`; `None` (ranks then discover it themselves)
/// when lstopo is missing or fails.
fn export_topology(path: &Path) -> Option<PathBuf> {
    let mut cmd = Command::new("lstopo-no-graphics");
    // The whole machine, whatever cpuset the daemon started in; each rank
    // restricts it to its own cgroup when it loads it
    // (HWLOC_THISSYSTEM_ALLOWED_RESOURCES), as its discovery would.
    cmd.args(["--whole-system", "--whole-io", "--of", "xml", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HWLOC_") {
            cmd.env_remove(k);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "lstopo-no-graphics unavailable (apt-get install hwloc-nox): MPI ranks discover the topology themselves");
            return None;
        }
    };
    let mut xml = String::new();
    let read = child
        .stdout
        .take()
        .map(|mut out| out.read_to_string(&mut xml));
    // Its output is what counts (a reaper may have collected it).
    let _ = child.wait();
    if !matches!(read, Some(Ok(_))) || !xml.trim_end().ends_with("</topology>") {
        tracing::warn!("lstopo-no-graphics gave no topology: MPI ranks discover it themselves");
        return None;
    }
    let tmp = path.with_extension("xml.tmp");
    let written = std::fs::write(&tmp, &xml).and_then(|_| {
        use std::os::unix::fs::PermissionsExt;
        // Ranks run as their owner, in the enclave's view of the state directory.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    });
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "hwloc topology exported for MPI ranks");
            Some(path.to_path_buf())
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the hwloc topology");
            let _ = std::fs::remove_file(&tmp);
            None
        }
    }
}

/// The environment that makes a rank's hwloc load `xml` instead of
/// discovering the machine: the same topology (restricted to the rank's own
/// cpuset, as discovery would), minus the plugins only discovery uses.
fn topology_env(xml: &Path) -> [(String, String); 4] {
    [
        ("HWLOC_XMLFILE".into(), xml.display().to_string()),
        ("HWLOC_THISSYSTEM".into(), "1".into()),
        ("HWLOC_THISSYSTEM_ALLOWED_RESOURCES".into(), "1".into()),
        (
            "HWLOC_PLUGINS_BLACKLIST".into(),
            "hwloc_gl,hwloc_opencl,hwloc_pci,hwloc_xml_libxml".into(),
        ),
    ]
}

/// How one rank's launch went.
type Launched = Result<(AppRecord, Option<Subscription>), Refusal>;

/// One rank to start.
struct RankLaunch {
    rank: u32,
    /// Index of its application in the job.
    app: usize,
    spec: LaunchSpec,
    /// Socketpair mode: its end of the PMI connection, taken by the launch.
    fd: Mutex<Option<OwnedFd>>,
}

/// A running job's first record, before its ranks start.
fn new_job_record(id: JobId, peer: &PeerCred, spec: &JobSpec, kvsname: String) -> JobRecord {
    JobRecord {
        id,
        name: spec.name.clone(),
        owner_uid: peer.uid,
        state: JobState::Running,
        kvsname,
        size: spec.apps.iter().map(|a| a.np).sum(),
        apps: vec![],
        exit_code: None,
        failure: None,
        started_ms: now_ms(),
        ended_ms: None,
        barriers: 0,
        mpi: spec.mpi,
        rev: 0,
    }
}

/// The rank-space library to preload when the job asks for rank spaces (by
/// default when it has several applications); `unavailable` when it is missing.
fn rank_space_preload(spec: &JobSpec) -> Result<Option<PathBuf>, Refusal> {
    if !spec.rank_spaces.unwrap_or(spec.apps.len() > 1) {
        return Ok(None);
    }
    let mpi = spec.mpi.unwrap_or(MpiFlavor::Mpich);
    let (var, name) = mpi_env::rank_space_library_name(mpi);
    mpi_env::rank_space_library(mpi).map(Some).ok_or_else(|| {
        refuse(
            ErrorCode::Unavailable,
            format!("the rank-space library {name} for {} was not found ({var}, next to leviathan, /usr/local/lib); build it (cargo build -p remora-pmpi) or pass --no-rank-spaces", mpi.display_name()),
        )
    })
}

/// The environment every rank of `app` starts from: the MPI's transport
/// settings for a job within or across PID namespaces
/// (`hobbes_proto::mpi_env`, shared with remora's Slurm launch) and the
/// shared topology, each unless the application sets the variable itself.
fn rank_defaults(
    app: &hobbes_proto::msg::JobApp,
    spans_namespaces: bool,
    mpi: MpiFlavor,
) -> Vec<(String, String)> {
    let span = if spans_namespaces {
        RankSpan::PidNamespaces
    } else {
        RankSpan::OneNamespace
    };
    let topology = TOPOLOGY.get().cloned().flatten();
    // The program's own hwloc settings win over the shared topology.
    let own_hwloc = app.env.iter().any(|(k, _)| k.starts_with("HWLOC_"));
    mpi_env::unless_set(
        mpi_env::transport_defaults(mpi, span)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(
                topology
                    .as_deref()
                    .filter(|_| !own_hwloc)
                    .map(topology_env)
                    .into_iter()
                    .flatten(),
            ),
        &app.env,
    )
}

/// A rank could not be launched: why, and the apps of the ranks that were.
struct LaunchFailed {
    refusal: Refusal,
    ranks: Vec<u64>,
}

/// Sort the launch results (in rank order): each started rank's app goes
/// into `record` and its subscription into the list. The first failure,
/// named by rank and application, comes back with every app started (to be
/// killed).
fn collect_launched(
    spec: &JobSpec,
    launches: &[RankLaunch],
    results: Vec<Option<Launched>>,
    record: &mut JobRecord,
) -> Result<(Vec<Subscription>, Vec<u64>), LaunchFailed> {
    let mut subs = Vec::with_capacity(launches.len());
    let mut ranks = Vec::with_capacity(launches.len());
    let mut failure = None;
    for (launch, result) in launches.iter().zip(results) {
        match result {
            Some(Ok((a, Some(sub)))) => {
                record.apps[launch.app].app_ids.push(a.id);
                ranks.push(a.id);
                subs.push(sub);
            }
            Some(Ok((a, None))) => {
                ranks.push(a.id);
                failure.get_or_insert_with(|| internal("streamed launch without a subscription"));
            }
            Some(Err(e)) => {
                failure.get_or_insert_with(|| {
                    refuse(
                        e.code,
                        format!(
                            "rank {} of {}: {}",
                            launch.rank, spec.apps[launch.app].name, e.message
                        ),
                    )
                });
            }
            // Not launched: an earlier rank failed.
            None => {}
        }
    }
    match failure {
        Some(refusal) => Err(LaunchFailed { refusal, ranks }),
        None => Ok((subs, ranks)),
    }
}

impl Daemon {
    /// Launch a job and supervise it on this connection until it ends.
    pub fn remora_launch(
        &self,
        stream: &mut UnixStream,
        peer: &PeerCred,
        spec: &JobSpec,
    ) -> Result<(), FrameError> {
        match self.start_job(peer, spec) {
            Err(e) => write_frame(stream, &Response::Error(e)),
            Ok((record, subs, events)) => self.supervise(stream, record, subs, events),
        }
    }

    /// Start job `spec` for `peer`: check it, record it (before any rank
    /// runs), launch every rank, and keep its live parts. A rank that cannot
    /// be launched fails the whole job: the ranks already started are killed
    /// and the record says why.
    fn start_job(
        &self,
        peer: &PeerCred,
        spec: &JobSpec,
    ) -> Result<(JobRecord, Vec<Subscription>, Events), Refusal> {
        let enclaves = self.check_job(peer, spec)?;
        let preload = rank_space_preload(spec)?;
        let id = self.new_job_id()?;
        let (events_tx, events) = mpsc::channel();
        let kvsname = format!("kvs_{}_{id}", std::process::id());
        let pmi = self.start_pmi(peer, spec, id, &kvsname, events_tx.clone())?;
        let mut record = new_job_record(id, peer, spec, kvsname);
        // Written before any rank runs, so the PMI server can count barriers in it.
        self.put_job(&mut record)?;
        let launches = self.rank_launches(spec, &enclaves, &pmi, preload, &mut record)?;
        let results = self.launch_ranks(peer, &pmi, &launches);
        let (subs, ranks) = match collect_launched(spec, &launches, results, &mut record) {
            Ok(started) => started,
            Err(LaunchFailed { refusal, ranks }) => {
                return Err(self.abandon_job(record, &pmi, &ranks, refusal))
            }
        };
        self.put_job(&mut record)?;
        self.jobs.insert(
            id,
            LiveJob {
                owner_uid: peer.uid,
                ranks,
                signalled: Mutex::new(None),
                pmi,
                must_connect: spec
                    .apps
                    .iter()
                    .flat_map(|a| std::iter::repeat_n(a.mpi.is_some(), a.np as usize))
                    .collect(),
            },
        );
        tracing::info!(
            job = id,
            size = record.size,
            apps = spec.apps.len(),
            "remora job started"
        );
        let events = Events {
            tx: events_tx,
            rx: events,
        };
        Ok((record, subs, events))
    }

    /// The job's PMI service, by its MPI: PMI-1 (MPICH) or PMIx (Open MPI).
    fn start_pmi(
        &self,
        peer: &PeerCred,
        spec: &JobSpec,
        id: JobId,
        kvsname: &str,
        events: mpsc::Sender<JobEvent>,
    ) -> Result<JobPmi, Refusal> {
        match spec.mpi.unwrap_or(MpiFlavor::Mpich) {
            MpiFlavor::Mpich => {
                let app_sizes: Vec<u32> = spec.apps.iter().map(|a| a.np).collect();
                crate::pmi::PmiJob::start(
                    self.nis.clone(),
                    id,
                    kvsname,
                    &app_sizes,
                    spec.pmi,
                    events,
                )
                .map(JobPmi::Simple)
                .map_err(|e| internal(format!("cannot start the PMI server: {e}")))
            }
            MpiFlavor::OpenMpi => {
                if spec.pmi == PmiMode::Socketpair {
                    return Err(refuse(
                        ErrorCode::InvalidSpec,
                        "Open MPI ranks reach their PMIx server through its socket; --pmi socketpair is for MPICH programs",
                    ));
                }
                let server = crate::pmix::server(&self.paths.root)
                    .map_err(|e| refuse(ErrorCode::Unavailable, e))?;
                let mut first_rank = 0;
                let apps = spec
                    .apps
                    .iter()
                    .enumerate()
                    .map(|(appnum, a)| {
                        let layout = hobbes_pmix::AppLayout {
                            appnum: appnum as u32,
                            first_rank,
                            np: a.np,
                            argv0: a.argv.first().cloned().unwrap_or_default(),
                            cwd: a.cwd.clone(),
                        };
                        first_rank += a.np;
                        layout
                    })
                    .collect();
                crate::pmix::PmixJob::start(
                    server,
                    self.nis.clone(),
                    id,
                    kvsname,
                    apps,
                    (peer.uid, peer.gid),
                    events,
                )
                .map(JobPmi::Pmix)
                .map_err(internal)
            }
        }
    }

    /// A job needs applications of at least one rank, at most
    /// [`MAX_JOB_RANKS`] in all (`invalid_spec`), each in a running enclave
    /// (`conflict`) that `peer` owns; returns each application's enclave.
    fn check_job(&self, peer: &PeerCred, spec: &JobSpec) -> Result<Vec<EnclaveRecord>, Refusal> {
        if spec.apps.is_empty() {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                "a job needs at least one application",
            ));
        }
        let size: u32 = spec.apps.iter().map(|a| a.np).sum();
        if spec.apps.iter().any(|a| a.np == 0) || size > MAX_JOB_RANKS {
            return Err(refuse(ErrorCode::InvalidSpec, format!("every application needs np >= 1, and a job at most {MAX_JOB_RANKS} processes (got {size})")));
        }
        let mpi = spec.mpi.unwrap_or(MpiFlavor::Mpich);
        if let Some(app) = spec.apps.iter().find(|a| a.mpi.is_some_and(|m| m != mpi)) {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!(
                    "application {} is built against {}, but the job's MPI is {}: one MPI job has one MPI library",
                    app.name,
                    app.mpi.map_or("?", MpiFlavor::display_name),
                    mpi.display_name()
                ),
            ));
        }
        let mut enclaves = Vec::new();
        for app in &spec.apps {
            let e = self.resolve(&app.enclave)?;
            Self::authorize_owner(peer, e.owner_uid, &format!("enclave {} ({})", e.id, e.name))?;
            if e.state != EnclaveState::Running {
                return Err(refuse(
                    ErrorCode::Conflict,
                    format!("enclave {} is {}", e.name, e.state),
                ));
            }
            enclaves.push(e);
        }
        Ok(enclaves)
    }

    /// Take the next job id (one NIS transaction).
    fn new_job_id(&self) -> Result<JobId, Refusal> {
        self.tx(|t| {
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.next_job_id = h.counters.next_job_id.max(1);
            let id = h.counters.next_job_id;
            h.counters.next_job_id += 1;
            t.put_header(&h)?;
            Ok::<_, TxError>(id)
        })
    }

    /// Every rank's launch, in rank order, with its environment; adds each
    /// application to `record`.
    fn rank_launches(
        &self,
        spec: &JobSpec,
        enclaves: &[EnclaveRecord],
        pmi: &JobPmi,
        preload: Option<PathBuf>,
        record: &mut JobRecord,
    ) -> Result<Vec<RankLaunch>, Refusal> {
        // Ranks in different PID namespaces cannot use UCX's pid-based transports
        // (its /proc/PID/fd shm links, and CMA's process_vm_readv): measured
        // here, MPI_Finalize then hangs. Named /dev/shm segments and TCP work.
        let spans_namespaces = self.privileged && enclaves.iter().any(|e| e.id != enclaves[0].id);
        let mut launches = Vec::with_capacity(record.size as usize);
        let mut rank = 0u32;
        for (appnum, (app, enclave)) in spec.apps.iter().zip(enclaves).enumerate() {
            record.apps.push(JobAppRecord {
                name: app.name.clone(),
                enclave: enclave.id,
                appnum: appnum as u32,
                first_rank: rank,
                np: app.np,
                app_ids: vec![],
            });
            let defaults =
                rank_defaults(app, spans_namespaces, spec.mpi.unwrap_or(MpiFlavor::Mpich));
            let first_rank = rank;
            for _ in 0..app.np {
                let mut env = defaults.clone();
                env.extend(app.env.iter().cloned());
                env.extend(pmi.env_for_rank(rank)?);
                env.push(("REMORA_JOB".into(), record.id.to_string()));
                env.push(("REMORA_APP".into(), app.name.clone()));
                // The application's place in the job, so libremora builds its
                // world from the group alone (no split of the whole job).
                env.push(("REMORA_APP_FIRST_RANK".into(), first_rank.to_string()));
                env.push(("REMORA_APP_SIZE".into(), app.np.to_string()));
                if let Some(lib) = &preload {
                    env.push(("LD_PRELOAD".into(), lib.display().to_string()));
                }
                let child_end = pmi
                    .child_end(rank)
                    .map_err(|e| internal(format!("PMI socketpair of rank {rank}: {e}")))?;
                launches.push(RankLaunch {
                    rank,
                    app: appnum,
                    spec: LaunchSpec {
                        enclave: hobbes_proto::msg::EnclaveRef::Id(enclave.id),
                        name: Some(format!("{}.{rank}", app.name)),
                        argv: app.argv.clone(),
                        env,
                        cwd: app.cwd.clone(),
                        stream: true,
                    },
                    fd: Mutex::new(child_end),
                });
                rank += 1;
            }
        }
        Ok(launches)
    }

    /// A rank failed to launch: kill the ranks that did, end the job as
    /// failed with `refusal`'s message, and answer with `refusal`.
    fn abandon_job(
        &self,
        mut record: JobRecord,
        pmi: &JobPmi,
        ranks: &[u64],
        refusal: Refusal,
    ) -> Refusal {
        for app in ranks {
            let _ = self.kill_app(&AS_DAEMON, *app, libc::SIGKILL);
        }
        // Everything the ranks put is in the NIS before the final record.
        pmi.close_mirror();
        record.state = JobState::Failed;
        record.failure = Some(refusal.message.clone());
        record.exit_code = Some(1);
        record.ended_ms = Some(now_ms());
        let _ = self.put_job(&mut record);
        let _ = self.tx(|t| {
            t.delete_kvs(&record.kvsname)?;
            Ok::<_, TxError>(())
        });
        refusal
    }

    /// Launch every rank, [`PARALLEL_LAUNCHES`] at a time; after a failure
    /// no further rank starts. Answers in rank order (`None`: not launched).
    fn launch_ranks(
        &self,
        peer: &PeerCred,
        pmi: &JobPmi,
        launches: &[RankLaunch],
    ) -> Vec<Option<Launched>> {
        let results: Vec<Mutex<Option<_>>> = launches.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..launches.len().min(PARALLEL_LAUNCHES) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(launch) = launches.get(i) else {
                        return;
                    };
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let fd = launch.fd.lock().unwrap_or_else(|p| p.into_inner()).take();
                    let result = self.launch_app_with_fd(peer, &launch.spec, fd);
                    pmi.spawned(launch.rank);
                    if !matches!(result, Ok((_, Some(_)))) {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                });
            }
        });
        results
            .into_iter()
            .map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    fn supervise(
        &self,
        stream: &mut UnixStream,
        mut record: JobRecord,
        subs: Vec<Subscription>,
        events: Events,
    ) -> Result<(), FrameError> {
        let job = record.id;
        let fwd_rx = forward_rank_events(subs, events);
        let _ = write_frame(stream, &Response::Job(Box::new(record.clone())));
        let names: HashMap<u32, String> = record
            .apps
            .iter()
            .flat_map(|a| (a.first_rank..a.first_rank + a.np).map(move |r| (r, a.name.clone())))
            .collect();
        let mut ended = vec![None::<AppRecord>; record.size as usize];
        let mut client_gone = false;
        while ended.iter().any(|e| e.is_none()) {
            let Ok(ev) = fwd_rx.recv() else { break };
            match ev {
                JobEvent::Output {
                    rank,
                    event: AppEvent::Output { stream: s, data },
                } => {
                    if !client_gone {
                        let app = names.get(&rank).cloned().unwrap_or_default();
                        if write_frame(
                            stream,
                            &Response::JobOutput {
                                job,
                                app,
                                rank,
                                stream: s,
                                data,
                            },
                        )
                        .is_err()
                        {
                            client_gone = true;
                            self.fail_job(&mut record, "the launcher went away", 1);
                        }
                    }
                }
                JobEvent::Output {
                    event: AppEvent::Dropped { .. },
                    ..
                } => {}
                JobEvent::Output {
                    rank,
                    event: AppEvent::Ended(app),
                } => {
                    let ok = app.exit == Some(ExitStatus::Code(0));
                    if !ok && record.failure.is_none() {
                        let code = app.exit.map(ExitStatus::shell_code).unwrap_or(1);
                        let name = names.get(&rank).map(String::as_str).unwrap_or("?");
                        self.fail_job(&mut record, &rank_failure(rank, name, &app), code);
                    }
                    ended[rank as usize] = Some(*app);
                }
                JobEvent::Abort { rank, code } => {
                    if record.failure.is_none() {
                        record.state = JobState::Aborted;
                        self.fail_job(
                            &mut record,
                            &format!("rank {rank} called MPI_Abort with code {code}"),
                            code,
                        );
                    }
                }
                JobEvent::PmiError { rank, message } => {
                    tracing::warn!(job, ?rank, message, "PMI client misbehaved");
                }
            }
        }
        if record.failure.is_none() {
            if let Some(lonely) = self.rank_that_never_connected(&record, &ended) {
                self.fail_job(&mut record, &lonely, 1);
            }
        }
        self.finish_job(&mut record);
        if client_gone {
            return Ok(());
        }
        write_frame(stream, &Response::JobEnded(Box::new(record)))
    }

    /// A rank of an MPI program that ended (successfully) without ever
    /// connecting to the job's PMI server ran as a singleton: its world was
    /// not the job's. Returns the message naming it, if one did. The PMIx
    /// server reports connections on its own thread, moments before the rank
    /// runs on: a rank not seen yet is given a second to show.
    fn rank_that_never_connected(
        &self,
        record: &JobRecord,
        ended: &[Option<AppRecord>],
    ) -> Option<String> {
        let live = self.jobs.get(record.id)?;
        let suspects: Vec<u32> = (0..record.size)
            .filter(|r| live.must_connect.get(*r as usize) == Some(&true))
            .filter(|r| {
                ended[*r as usize]
                    .as_ref()
                    .is_some_and(|a| a.exit == Some(ExitStatus::Code(0)))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let lonely = loop {
            let lonely: Vec<u32> = suspects
                .iter()
                .copied()
                .filter(|r| !live.pmi.connected(*r))
                .collect();
            if lonely.is_empty() || std::time::Instant::now() > deadline {
                break lonely;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let rank = *lonely.first()?;
        let app = record
            .apps
            .iter()
            .find(|a| (a.first_rank..a.first_rank + a.np).contains(&rank))
            .map_or("?", |a| a.name.as_str());
        let mpi = record.mpi.unwrap_or(MpiFlavor::Mpich);
        Some(format!(
            "rank {rank} ({app}) ended without connecting to the job's {} server, so it ran alone as a singleton, not in a job of {}{}: is it built against {} (remora read it from the program; --mpi overrides)?",
            live.pmi.name(),
            record.size,
            if lonely.len() > 1 {
                format!(" ({} ranks did so)", lonely.len())
            } else {
                String::new()
            },
            mpi.display_name()
        ))
    }

    /// Record the first failure and kill every rank still running.
    fn fail_job(&self, record: &mut JobRecord, what: &str, code: i32) {
        if record.failure.is_none() {
            tracing::warn!(job = record.id, what, code, "remora job failed; killing it");
            record.failure = Some(what.to_string());
            record.exit_code = Some(code);
            if record.state == JobState::Running {
                record.state = JobState::Failed;
            }
        }
        let ranks = self
            .jobs
            .get(record.id)
            .map(|j| j.ranks.clone())
            .unwrap_or_default();
        for app in ranks {
            let _ = self.kill_app(&AS_DAEMON, app, libc::SIGKILL);
        }
    }

    fn finish_job(&self, record: &mut JobRecord) {
        let live = self.jobs.remove(record.id);
        // Everything the ranks put and every barrier is in the NIS before the final record.
        if let Some(live) = &live {
            live.pmi.close_mirror();
        }
        if let Some(sig) = live
            .as_ref()
            .and_then(|j| *j.signalled.lock().unwrap_or_else(|p| p.into_inner()))
        {
            if record.state != JobState::Aborted {
                record.state = JobState::Killed;
                record
                    .failure
                    .get_or_insert_with(|| format!("killed by signal {sig} sent to the job"));
                record.exit_code.get_or_insert(128 + sig);
            }
        }
        if record.state == JobState::Running {
            record.state = JobState::Finished;
            record.exit_code = Some(0);
        }
        record.ended_ms = Some(now_ms());
        let kvsname = record.kvsname.clone();
        let _ = self.put_job(record);
        let _ = self.tx(|t| {
            t.delete_kvs(&kvsname)?;
            Ok::<_, TxError>(())
        });
        tracing::info!(job = record.id, state = ?record.state, exit = ?record.exit_code, "remora job ended");
    }

    /// Write the supervisor's view of a job, keeping what the PMI server recorded.
    fn put_job(&self, record: &mut JobRecord) -> Result<(), Refusal> {
        self.tx(|t| {
            if let Some(stored) = t.job(record.id)? {
                record.barriers = record.barriers.max(stored.barriers);
                record.rev = stored.rev;
            }
            t.put_job(record)?;
            Ok::<_, TxError>(())
        })
    }

    /// Serve `remora_signal`: send `signal` to every rank of running job `job`
    /// (best effort, rank by rank) and remember it, so that the job's end is
    /// recorded as killed. Root or the job's owner only (`permission_denied`);
    /// `not_found` when no such job is running.
    pub fn remora_signal(&self, peer: &PeerCred, job: JobId, signal: i32) -> Result<(), Refusal> {
        let live = self.jobs.get(job).ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("no running job {job} (remora list)"),
            )
        })?;
        if peer.uid != 0 && peer.uid != live.owner_uid {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: job {job} belongs to uid {}",
                    live.owner_uid
                ),
            ));
        }
        *live.signalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
        for app in &live.ranks {
            let _ = self.kill_app(peer, *app, signal);
        }
        Ok(())
    }

    /// Serve `list_jobs`: every Remora job record in the NIS, running or ended.
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>, Refusal> {
        self.nis.reader().jobs().map_err(internal)
    }
}

/// One forwarder thread per rank turns its app events into job events, next
/// to the PMI server's (abort, protocol errors); the receiver of them all.
fn forward_rank_events(subs: Vec<Subscription>, events: Events) -> mpsc::Receiver<JobEvent> {
    let Events { tx, rx } = events;
    for (rank, sub) in subs.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(event) = sub.rx.recv() {
                sub.consumed(&event);
                let end = matches!(event, AppEvent::Ended(_));
                let rank = rank as u32;
                if tx.send(JobEvent::Output { rank, event }).is_err() || end {
                    return;
                }
            }
        });
    }
    rx
}

/// What a rank's unsuccessful end says about the job.
fn rank_failure(rank: u32, name: &str, app: &AppRecord) -> String {
    match app.exit {
        Some(ExitStatus::Signal(s)) => format!("rank {rank} ({name}) was killed by signal {s}"),
        Some(ExitStatus::Code(c)) => format!("rank {rank} ({name}) exited with code {c}"),
        None => format!(
            "rank {rank} was lost: {}",
            app.detail.clone().unwrap_or_default()
        ),
    }
}
