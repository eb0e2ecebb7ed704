//! Remora jobs: one PMI job spanning every application of a composition,
//! each rank a Leviathan app started through its enclave's control process.
//!
//! The connection that launched a job supervises it: it multiplexes the
//! ranks' output, kills the whole job on the first abnormal end (MPI_Abort,
//! a non-zero exit, a crash) or when the launcher goes away (as mpiexec
//! does), and answers with the job's final record.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use hobbes_proto::frame::{write_frame, FrameError};
use hobbes_proto::model::{AppRecord, EnclaveState, ExitStatus, JobAppRecord, JobRecord, JobState};
use hobbes_proto::msg::{ErrorCode, JobId, JobSpec, LaunchSpec, Response};

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

/// What the supervisor hears.
pub enum JobEvent {
    Output { rank: u32, event: AppEvent },
    Abort { rank: u32, code: i32 },
    PmiError { rank: Option<u32>, message: String },
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
    _pmi: crate::pmi::PmiJob,
}

/// The rank-space library: `HOBBES_REMORA_LIB`, else next to `leviathan`, else installed.
fn rank_space_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOBBES_REMORA_LIB") {
        return Some(PathBuf::from(p));
    }
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    [
        exe.with_file_name("libremora.so"),
        PathBuf::from("/usr/local/lib/libremora.so"),
        PathBuf::from("/usr/lib/libremora.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
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

    fn start_job(
        &self,
        peer: &PeerCred,
        spec: &JobSpec,
    ) -> Result<(JobRecord, Vec<Subscription>, Events), Refusal> {
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
        let rank_spaces = spec.rank_spaces.unwrap_or(spec.apps.len() > 1);
        let preload = if rank_spaces {
            Some(rank_space_library().ok_or_else(|| {
                refuse(
                    ErrorCode::Unavailable,
                    "the rank-space library libremora.so was not found (HOBBES_REMORA_LIB, next to leviathan, /usr/local/lib); build it (cargo build -p remora-pmpi) or pass --no-rank-spaces",
                )
            })?)
        } else {
            None
        };

        let id = self.tx(|t| {
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.next_job_id = h.counters.next_job_id.max(1);
            let id = h.counters.next_job_id;
            h.counters.next_job_id += 1;
            t.put_header(&h)?;
            Ok::<_, TxError>(id)
        })?;
        let kvsname = format!("kvs_{}_{id}", std::process::id());
        let app_sizes: Vec<u32> = spec.apps.iter().map(|a| a.np).collect();
        let (events_tx, events) = mpsc::channel();
        let pmi = crate::pmi::PmiJob::start(
            self.nis.clone(),
            id,
            &kvsname,
            &app_sizes,
            spec.pmi,
            events_tx.clone(),
        )
        .map_err(|e| internal(format!("cannot start the PMI server: {e}")))?;

        let mut record = JobRecord {
            id,
            name: spec.name.clone(),
            owner_uid: peer.uid,
            state: JobState::Running,
            kvsname: kvsname.clone(),
            size,
            apps: vec![],
            exit_code: None,
            failure: None,
            started_ms: now_ms(),
            ended_ms: None,
            barriers: 0,
            rev: 0,
        };
        // Ranks in different PID namespaces cannot use UCX's pid-based transports
        // (its /proc/PID/fd shm links, and CMA's process_vm_readv): measured
        // here, MPI_Finalize then hangs. Named /dev/shm segments and TCP work.
        let spans_namespaces = self.privileged && enclaves.iter().any(|e| e.id != enclaves[0].id);
        let ucx_defaults: &[(&str, &str)] = if spans_namespaces {
            &[("UCX_POSIX_USE_PROC_LINK", "n"), ("UCX_TLS", "^cma")]
        } else {
            &[]
        };
        // Written before any rank runs, so the PMI server can count barriers in it.
        self.put_job(&mut record)?;
        let mut subs = Vec::new();
        let mut ranks = Vec::new();
        let mut rank = 0u32;
        for (appnum, (app, enclave)) in spec.apps.iter().zip(&enclaves).enumerate() {
            let mut rec = JobAppRecord {
                name: app.name.clone(),
                enclave: enclave.id,
                appnum: appnum as u32,
                first_rank: rank,
                np: app.np,
                app_ids: vec![],
            };
            for _ in 0..app.np {
                let mut env: Vec<(String, String)> = ucx_defaults
                    .iter()
                    .filter(|(k, _)| !app.env.iter().any(|(ak, _)| ak == k))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                env.extend(app.env.iter().cloned());
                env.extend(pmi.env_for_rank(rank));
                env.push(("REMORA_JOB".into(), id.to_string()));
                env.push(("REMORA_APP".into(), app.name.clone()));
                if let Some(lib) = &preload {
                    env.push(("LD_PRELOAD".into(), lib.display().to_string()));
                }
                let launch = LaunchSpec {
                    enclave: hobbes_proto::msg::EnclaveRef::Id(enclave.id),
                    name: Some(format!("{}.{rank}", app.name)),
                    argv: app.argv.clone(),
                    env,
                    cwd: app.cwd.clone(),
                    stream: true,
                };
                let child_end = pmi
                    .child_end(rank)
                    .map_err(|e| internal(format!("PMI socketpair of rank {rank}: {e}")))?;
                let launched = self.launch_app_with_fd(peer, &launch, child_end);
                pmi.spawned(rank);
                match launched {
                    Ok((a, Some(sub))) => {
                        rec.app_ids.push(a.id);
                        ranks.push(a.id);
                        subs.push(sub);
                    }
                    Ok((_, None)) => {
                        return Err(internal("streamed launch without a subscription"))
                    }
                    Err(e) => {
                        for app in &ranks {
                            let _ = self.kill_app(&AS_DAEMON, *app, libc::SIGKILL);
                        }
                        return Err(refuse(
                            e.code,
                            format!("rank {rank} of {}: {}", app.name, e.message),
                        ));
                    }
                }
                rank += 1;
            }
            record.apps.push(rec);
        }
        self.put_job(&mut record)?;
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Arc::new(LiveJob {
                owner_uid: peer.uid,
                ranks,
                signalled: Mutex::new(None),
                _pmi: pmi,
            }),
        );
        tracing::info!(job = id, size, apps = spec.apps.len(), "remora job started");
        Ok((
            record,
            subs,
            Events {
                tx: events_tx,
                rx: events,
            },
        ))
    }

    fn supervise(
        &self,
        stream: &mut UnixStream,
        mut record: JobRecord,
        subs: Vec<Subscription>,
        events: Events,
    ) -> Result<(), FrameError> {
        let job = record.id;
        // One forwarder per rank turns its app events into job events, next
        // to the PMI server's (abort, protocol errors).
        let Events {
            tx: fwd_tx,
            rx: fwd_rx,
        } = events;
        for (rank, sub) in subs.into_iter().enumerate() {
            let fwd_tx = fwd_tx.clone();
            std::thread::spawn(move || {
                while let Ok(event) = sub.rx.recv() {
                    sub.consumed(&event);
                    let end = matches!(event, AppEvent::Ended(_));
                    if fwd_tx
                        .send(JobEvent::Output {
                            rank: rank as u32,
                            event,
                        })
                        .is_err()
                        || end
                    {
                        return;
                    }
                }
            });
        }
        drop(fwd_tx);
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
                        let what = match app.exit {
                            Some(ExitStatus::Signal(s)) => format!(
                                "rank {rank} ({}) was killed by signal {s}",
                                names.get(&rank).map(String::as_str).unwrap_or("?")
                            ),
                            Some(ExitStatus::Code(c)) => format!(
                                "rank {rank} ({}) exited with code {c}",
                                names.get(&rank).map(String::as_str).unwrap_or("?")
                            ),
                            None => format!(
                                "rank {rank} was lost: {}",
                                app.detail.clone().unwrap_or_default()
                            ),
                        };
                        self.fail_job(&mut record, &what, code);
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
        self.finish_job(&mut record);
        if client_gone {
            return Ok(());
        }
        write_frame(stream, &Response::JobEnded(Box::new(record)))
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
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.id)
            .map(|j| j.ranks.clone())
            .unwrap_or_default();
        for app in ranks {
            let _ = self.kill_app(&AS_DAEMON, app, libc::SIGKILL);
        }
    }

    fn finish_job(&self, record: &mut JobRecord) {
        let live = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&record.id);
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

    pub fn remora_signal(&self, peer: &PeerCred, job: JobId, signal: i32) -> Result<(), Refusal> {
        let live = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job)
            .cloned();
        let live = live.ok_or_else(|| {
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

    pub fn list_jobs(&self) -> Result<Vec<JobRecord>, Refusal> {
        self.nis.reader().jobs().map_err(internal)
    }
}
