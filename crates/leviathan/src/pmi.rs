//! Remora's PMI server (RPMI) inside leviathan: one `hobbes_pmi` job per
//! Remora job, served over TCP on loopback or socketpairs, its key/values
//! mirrored in the Node Information Service, its events fed to the job's
//! supervisor.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hobbes_nis::{NisError, NisWriter};
use hobbes_pmi::{Job, JobConfig, JobObserver, PmiTransport, SocketpairServer, TcpServer};
use hobbes_proto::msg::PmiMode;

use crate::daemon::remora::JobEvent;

/// How long the supervisor waits for the mirror to catch up at the job's end.
const MIRROR_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

enum Transport {
    Tcp(TcpServer),
    Socketpair(SocketpairServer),
}

/// A running PMI job. Dropping it ends the job's PMI service.
pub struct PmiJob {
    job: Arc<Job>,
    transport: Transport,
    mirror: Mutex<Option<Sender<MirrorOp>>>,
}

/// What the PMI server tells the mirror thread.
enum MirrorOp {
    Put(String, String),
    Barrier(u64),
    /// Apply everything before this, answer, and stop mirroring.
    Close(Sender<()>),
}

/// Mirrors the job's key/values and barriers into the NIS (the seeds' RPMI
/// database). The PMI server calls it with the job's lock held, on the ranks'
/// critical path (the last rank into a barrier releases the others only after
/// `on_barrier` returns), so it only queues: one thread applies the queue in
/// order, everything pending in one NIS transaction.
struct NisMirror {
    ops: Mutex<Sender<MirrorOp>>,
}

impl NisMirror {
    fn send(&self, op: MirrorOp) {
        // Fails only once the job is closed: nothing is recorded after its end.
        let _ = self.ops.lock().unwrap_or_else(|p| p.into_inner()).send(op);
    }
}

impl JobObserver for NisMirror {
    fn on_put(&self, key: &str, value: &str) {
        self.send(MirrorOp::Put(key.to_string(), value.to_string()));
    }

    fn on_barrier(&self, generation: u64) {
        self.send(MirrorOp::Barrier(generation));
    }
}

/// The mirror thread: apply what is queued, a batch per NIS transaction.
fn mirror(nis: &NisWriter, kvsname: &str, job_id: u64, ops: &Receiver<MirrorOp>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        batch.extend(ops.try_iter());
        let close = batch.iter().position(|op| matches!(op, MirrorOp::Close(_)));
        let applied = close.map_or(&batch[..], |i| &batch[..i]);
        if !applied.is_empty() {
            let written = nis.update(|t| -> Result<(), NisError> {
                let mut barriers = 0;
                for op in applied {
                    match op {
                        MirrorOp::Put(k, v) => t.put_pmi(kvsname, k, v)?,
                        MirrorOp::Barrier(g) => barriers = barriers.max(*g),
                        MirrorOp::Close(_) => {}
                    }
                }
                // The record is written before any rank runs; keep the highest count.
                if barriers > 0 {
                    if let Some(mut job) = t.job(job_id)? {
                        if barriers > job.barriers {
                            job.barriers = barriers;
                            t.put_job(&mut job)?;
                        }
                    }
                }
                Ok(())
            });
            if let Err(e) = written {
                tracing::warn!(job = job_id, error = %e, "cannot mirror PMI state in the NIS");
            }
        }
        if let Some(i) = close {
            if let MirrorOp::Close(ack) = &batch[i] {
                let _ = ack.send(());
            }
            return;
        }
    }
}

impl PmiJob {
    /// Start the PMI service of Remora job `job_id` (called by the daemon's
    /// `remora_launch` handler before any rank is launched): one PMI job
    /// named `kvsname` whose applications have `app_sizes` ranks each (ranks
    /// numbered across them in order), served over loopback TCP or one
    /// socketpair per rank (`mode`). Puts and barriers are mirrored into `nis`
    /// by a thread of its own; aborts, rank errors and finalizes go to
    /// `events`, the job's supervisor. Errors (`InvalidInput`) when the job
    /// configuration is unusable (no ranks, a bad KVS name), or when a socket
    /// or a thread cannot be created.
    pub fn start(
        nis: Arc<NisWriter>,
        job_id: u64,
        kvsname: &str,
        app_sizes: &[u32],
        mode: PmiMode,
        events: Sender<JobEvent>,
    ) -> std::io::Result<PmiJob> {
        let config = JobConfig::mpmd(kvsname, app_sizes);
        let (ops_tx, ops_rx) = mpsc::channel();
        {
            let kvsname = kvsname.to_string();
            std::thread::Builder::new()
                .name("pmi-mirror".into())
                .spawn(move || mirror(&nis, &kvsname, job_id, &ops_rx))?;
        }
        let observer = Arc::new(NisMirror {
            ops: Mutex::new(ops_tx.clone()),
        });
        let job =
            Arc::new(Job::with_observer(config, observer).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?);
        let transport = match mode {
            PmiMode::Tcp => Transport::Tcp(TcpServer::start(job.clone())?),
            PmiMode::Socketpair => Transport::Socketpair(SocketpairServer::start(job.clone())?),
        };
        {
            let job = job.clone();
            std::thread::Builder::new()
                .name("pmi-events".into())
                .spawn(move || forward_events(&job, &events))?;
        }
        Ok(PmiJob {
            job,
            transport,
            mirror: Mutex::new(Some(ops_tx)),
        })
    }

    /// The environment rank `rank` needs (socketpair mode: without PMI_FD,
    /// which the control process sets to the descriptor it passes on).
    pub fn env_for_rank(&self, rank: u32) -> Vec<(String, String)> {
        match &self.transport {
            Transport::Tcp(t) => t.env_for_rank(rank),
            Transport::Socketpair(s) => s
                .env_for_rank(rank)
                .into_iter()
                .filter(|(k, _)| k != "PMI_FD")
                .collect(),
        }
    }

    /// Socketpair mode: a descriptor of rank `rank`'s end, to hand to its process.
    pub fn child_end(&self, rank: u32) -> std::io::Result<Option<OwnedFd>> {
        let Transport::Socketpair(s) = &self.transport else {
            return Ok(None);
        };
        let Some(raw) = s.child_fd(rank) else {
            return Ok(None);
        };
        // SAFETY: the server holds `raw` open until `spawned(rank)`, which comes after this.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        fd.try_clone_to_owned().map(Some)
    }

    /// Whether rank `rank` connected to the server (sent its `init`).
    pub fn connected(&self, rank: u32) -> bool {
        self.job.is_connected(rank)
    }

    /// The rank's process has its end: close ours, so its exit shows as EOF.
    pub fn spawned(&self, rank: u32) {
        if let Transport::Socketpair(s) = &self.transport {
            s.spawned(rank);
        }
    }

    /// The job has ended: wait (bounded) until the NIS holds everything the
    /// ranks put and every barrier, then stop mirroring, so nothing lands in
    /// the NIS after the supervisor's final record and the KVS's removal.
    pub fn close_mirror(&self) {
        let Some(ops) = self.mirror.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let (ack_tx, ack_rx) = mpsc::channel();
        if ops.send(MirrorOp::Close(ack_tx)).is_ok()
            && ack_rx.recv_timeout(MIRROR_FLUSH_TIMEOUT).is_err()
        {
            tracing::warn!("the PMI mirror did not catch up within {MIRROR_FLUSH_TIMEOUT:?}");
        }
    }
}

impl Drop for PmiJob {
    fn drop(&mut self) {
        self.job.cancel();
    }
}

/// Feed the PMI server's events to the supervisor until it stops listening.
fn forward_events(job: &Job, events: &Sender<JobEvent>) {
    loop {
        // Wakes on an event, or at once when the job is cancelled (its end).
        let Some(ev) = job.next_event(Duration::from_secs(3600)) else {
            if job.is_cancelled() {
                return;
            }
            continue;
        };
        let sent = match ev {
            hobbes_pmi::JobEvent::Abort { rank, exitcode } => events.send(JobEvent::Abort {
                rank,
                code: exitcode,
            }),
            hobbes_pmi::JobEvent::RankError { rank, error } => events.send(JobEvent::PmiError {
                rank: Some(rank),
                message: error,
            }),
            hobbes_pmi::JobEvent::StrayConnection { error } => events.send(JobEvent::PmiError {
                rank: None,
                message: error,
            }),
            // A rank's exit is reported by its enclave; these add nothing.
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}
