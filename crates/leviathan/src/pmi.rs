//! Remora's PMI server (RPMI) inside leviathan: one `hobbes_pmi` job per
//! Remora job, served over TCP on loopback or socketpairs, its key/values
//! mirrored in the Node Information Service, its events fed to the job's
//! supervisor.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use hobbes_nis::{NisError, NisWriter};
use hobbes_pmi::{Job, JobConfig, JobObserver, PmiTransport, SocketpairServer, TcpServer};
use hobbes_proto::msg::PmiMode;

use crate::daemon::remora::JobEvent;

enum Transport {
    Tcp(TcpServer),
    Socketpair(SocketpairServer),
}

/// A running PMI job. Dropping it ends the job's PMI service.
pub struct PmiJob {
    job: Arc<Job>,
    transport: Transport,
    stop: Arc<AtomicBool>,
}

/// Mirrors the job's key/values and barriers into the NIS (the seeds' RPMI database).
struct NisMirror {
    nis: Arc<NisWriter>,
    kvsname: String,
    job_id: u64,
}

impl JobObserver for NisMirror {
    fn on_put(&self, key: &str, value: &str) {
        let _ = self
            .nis
            .update(|t| -> Result<(), NisError> { t.put_pmi(&self.kvsname, key, value) });
    }

    fn on_barrier(&self, generation: u64) {
        let _ = self.nis.update(|t| -> Result<(), NisError> {
            // The record is written once every rank is launched; until then there is none.
            if let Some(mut job) = t.job(self.job_id)? {
                job.barriers = job.barriers.max(generation);
                t.put_job(&mut job)?;
            }
            Ok(())
        });
    }
}

impl PmiJob {
    pub fn start(
        nis: Arc<NisWriter>,
        job_id: u64,
        kvsname: &str,
        app_sizes: &[u32],
        mode: PmiMode,
        events: Sender<JobEvent>,
    ) -> std::io::Result<PmiJob> {
        let config = JobConfig::mpmd(kvsname, app_sizes);
        let observer = Arc::new(NisMirror {
            nis,
            kvsname: kvsname.to_string(),
            job_id,
        });
        let job =
            Arc::new(Job::with_observer(config, observer).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?);
        let transport = match mode {
            PmiMode::Tcp => Transport::Tcp(TcpServer::start(job.clone())?),
            PmiMode::Socketpair => Transport::Socketpair(SocketpairServer::start(job.clone())?),
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (job, stop) = (job.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pmi-events".into())
                .spawn(move || forward_events(&job, &stop, &events))?;
        }
        Ok(PmiJob {
            job,
            transport,
            stop,
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

    /// The rank's process has its end: close ours, so its exit shows as EOF.
    pub fn spawned(&self, rank: u32) {
        if let Transport::Socketpair(s) = &self.transport {
            s.spawned(rank);
        }
    }
}

impl Drop for PmiJob {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.job.cancel();
    }
}

fn forward_events(job: &Job, stop: &AtomicBool, events: &Sender<JobEvent>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(ev) = job.next_event(Duration::from_millis(100)) else {
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
