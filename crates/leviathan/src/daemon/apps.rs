//! Applications: launch, signal, wait, output, exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hobbes_proto::control::{ControlDown, ControlUp, LaunchCommand};
use hobbes_proto::model::{
    AppId, AppRecord, AppState, BoundProcess, EnclaveId, EnclaveKind, EnclaveRecord, EnclaveState,
    ExitStatus, ProcId, ProcRecord, HOST_ENCLAVE,
};
use hobbes_proto::msg::{ErrorCode, LaunchSpec, Stream};
use hobbes_proto::slurm::SlurmTask;
use hobbes_proto::{ENV_APP_ID, ENV_ENCLAVE_ID, ENV_NIS, ENV_SOCKET};

use super::enclaves::TxError;
use super::{internal, now_ms, refuse, Daemon, Refusal};
use crate::sys::{self, PeerCred};
use hobbes_cgroups::step_nest::StepNest;

/// Output queued for one slow client beyond which chunks are dropped (the log keeps them).
const MAX_QUEUED_OUTPUT: usize = 8 << 20;
/// How long the control process may take to start a program.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest argv/env accepted (bytes, all strings together).
const MAX_LAUNCH_BYTES: usize = 1 << 20;
/// Finished apps kept in the NIS (with their logs); older ones are pruned.
pub const MAX_FINISHED_APPS: usize = 4096;

/// What a waiting client receives.
pub enum AppEvent {
    Output { stream: Stream, data: Vec<u8> },
    Dropped { bytes: u64 },
    Ended(Box<AppRecord>),
}

pub struct Subscriber {
    tx: mpsc::Sender<AppEvent>,
    queued: Arc<AtomicUsize>,
    dropped: u64,
    wants_output: bool,
}

/// A client's subscription to one app.
pub struct Subscription {
    pub rx: mpsc::Receiver<AppEvent>,
    pub queued: Arc<AtomicUsize>,
}

impl Subscription {
    /// Account for an event taken off the queue.
    pub fn consumed(&self, ev: &AppEvent) {
        if let AppEvent::Output { data, .. } = ev {
            self.queued.fetch_sub(data.len(), Ordering::Relaxed);
        }
    }
}

/// The apps service's own state: the clients subscribed to each app's events
/// (`wait_app`, streamed launches, Remora ranks), behind one lock that is
/// never held while calling out.
#[derive(Default)]
pub struct Subscribers {
    by_app: Mutex<HashMap<AppId, Vec<Subscriber>>>,
}

impl Subscribers {
    /// Nobody subscribed.
    pub fn new() -> Subscribers {
        Subscribers::default()
    }

    /// Register a subscription to app `app`'s events: its end, and with
    /// `wants_output` its forwarded output (up to 8 MiB queued, beyond which
    /// chunks are dropped and counted). Taken before the app can end (a
    /// streamed launch subscribes before the launch is sent; `wait_app` before
    /// it reads the record), so the end is never missed. The subscription is
    /// removed when the app ends.
    pub fn subscribe(&self, app: AppId, wants_output: bool) -> Subscription {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        self.by_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app)
            .or_default()
            .push(Subscriber {
                tx,
                queued: queued.clone(),
                dropped: 0,
                wants_output,
            });
        Subscription { rx, queued }
    }

    /// Drop every subscription to app `app` (it does not exist).
    fn forget(&self, app: AppId) {
        self.by_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&app);
    }

    /// Tell every subscriber of `rec`'s app that it ended (after the count of
    /// output it lost, if any), and drop the subscriptions.
    fn notify_end(&self, rec: &AppRecord) {
        let subs = self
            .by_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rec.id)
            .unwrap_or_default();
        for s in subs {
            if s.dropped > 0 {
                let _ = s.tx.send(AppEvent::Dropped { bytes: s.dropped });
            }
            let _ = s.tx.send(AppEvent::Ended(Box::new(rec.clone())));
        }
    }

    /// Queue `data` for each subscriber of `app` that wants output; a
    /// subscriber more than 8 MiB behind loses the chunk (counted), one that
    /// hung up is dropped.
    fn deliver_output(&self, app: AppId, stream: Stream, data: Vec<u8>) {
        let mut subs = self.by_app.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = subs.get_mut(&app) else {
            return;
        };
        list.retain_mut(|s| {
            if !s.wants_output {
                return true;
            }
            if s.queued.load(Ordering::Relaxed) + data.len() > MAX_QUEUED_OUTPUT {
                s.dropped += data.len() as u64;
                return true;
            }
            s.queued.fetch_add(data.len(), Ordering::Relaxed);
            s.tx.send(AppEvent::Output {
                stream,
                data: data.clone(),
            })
            .is_ok()
        });
    }
}

impl Daemon {
    /// Which enclave and app a host pid belongs to: the global process map,
    /// else the nearest ancestor that is an app or a control process, else
    /// the host. (A process of a kind whose apps are not host processes, a
    /// guest's, is known by the link it speaks through instead.)
    pub(super) fn whose_process(&self, pid: u32) -> (EnclaveId, Option<AppId>) {
        let nis = self.nis.reader();
        let enclaves = nis.enclaves().unwrap_or_default();
        let mut cur = pid;
        // The process just below `cur` on the way up.
        let mut below = None;
        for _ in 0..64 {
            if cur <= 1 {
                break;
            }
            if let Ok(Some(p)) = nis.proc_by_global(cur) {
                return (p.enclave, Some(p.app));
            }
            if let Some(e) = enclaves.iter().find(|e| e.control_pid == Some(cur)) {
                // `below` is one of the enclave's apps, which runs as soon as it is
                // spawned and may not be recorded yet: give the launch a moment.
                if let Some(app_pid) = below {
                    let deadline = Instant::now() + Duration::from_millis(500);
                    while Instant::now() < deadline {
                        if let Ok(Some(p)) = nis.proc_by_global(app_pid) {
                            return (p.enclave, Some(p.app));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                return (e.id, None);
            }
            below = Some(cur);
            match sys::parent_of(cur) {
                Some(parent) => cur = parent,
                None => break,
            }
        }
        (HOST_ENCLAVE, None)
    }

    /// Subscribe to app `app`'s events ([`Subscribers::subscribe`]).
    pub fn subscribe(&self, app: AppId, wants_output: bool) -> Subscription {
        self.subs.subscribe(app, wants_output)
    }

    /// Serve `launch_app` for `peer` (protocol.md §4.1): check the size limit
    /// (1 MiB of argv and environment: `too_large`) and the argv and
    /// environment (`invalid_spec`), that the peer is root or the enclave's
    /// owner (`permission_denied`), that the enclave is running (`conflict`)
    /// and connected (`unavailable`); record the app, then have the control
    /// process start it with the peer's uid/gid and the `HOBBES_*` variables.
    /// Returns the running record (and, with `spec.stream`, the subscription
    /// the output comes through) once the control process reported the start,
    /// within 30 s; a program that cannot be started is `invalid_spec`, a
    /// control process that does not answer in time `unavailable` (either
    /// way the app is recorded as failed).
    pub fn launch_app(
        &self,
        peer: &PeerCred,
        spec: &LaunchSpec,
    ) -> Result<(AppRecord, Option<Subscription>), Refusal> {
        self.launch_app_with_fd(peer, spec, None)
    }

    /// Launch, handing the app an inherited descriptor named by `PMI_FD`
    /// (Remora's socketpair PMI mode).
    pub fn launch_app_with_fd(
        &self,
        peer: &PeerCred,
        spec: &LaunchSpec,
        pmi_fd: Option<std::os::fd::OwnedFd>,
    ) -> Result<(AppRecord, Option<Subscription>), Refusal> {
        let program = check_launch_spec(spec)?;
        let (enclave, link) = self.launchable(peer, spec)?;
        let rec = self.record_app(peer, spec, &enclave, program)?;
        let sub = spec.stream.then(|| self.subscribe(rec.id, true));
        let env = self.app_env(spec, &enclave, rec.id);
        let cmd = |seq| {
            ControlDown::Launch(Box::new(LaunchCommand {
                seq,
                app: rec.id,
                argv: spec.argv.clone(),
                env: env.clone(),
                cwd: spec.cwd.clone(),
                uid: peer.uid,
                gid: peer.gid,
                stdout_log: rec.stdout_log.clone(),
                stderr_log: rec.stderr_log.clone(),
                forward_output: spec.stream,
                pmi_fd: pmi_fd.is_some(),
            }))
        };
        let fds: Vec<_> = pmi_fd.iter().map(std::os::fd::AsFd::as_fd).collect();
        match link.call_with_fds(cmd, &fds, LAUNCH_TIMEOUT) {
            Ok(ControlUp::Started { local_pid, .. }) => {
                // The link thread recorded the start before passing the reply on.
                let rec = self
                    .nis
                    .reader()
                    .app(rec.id)
                    .map_err(internal)?
                    .ok_or_else(|| internal("app record vanished"))?;
                tracing::info!(app = rec.id, enclave = enclave.id, local_pid, procs = ?rec.procs, argv = ?spec.argv, "app started");
                Ok((rec, sub))
            }
            Ok(ControlUp::LaunchFailed { error, .. }) => {
                self.app_failed(rec.id, &error);
                Err(refuse(
                    ErrorCode::InvalidSpec,
                    format!("enclave {}: {error}", enclave.name),
                ))
            }
            Ok(other) => {
                self.app_failed(rec.id, "unexpected reply from the control process");
                Err(internal(format!("unexpected reply {other:?}")))
            }
            Err(e) => {
                self.app_failed(rec.id, &e);
                Err(refuse(ErrorCode::Unavailable, e))
            }
        }
    }

    /// The enclave a launch names, if the peer may launch there
    /// (`permission_denied`), it is running (`conflict`) and its control
    /// process is connected (`unavailable`); with its link.
    fn launchable(
        &self,
        peer: &PeerCred,
        spec: &LaunchSpec,
    ) -> Result<(EnclaveRecord, Arc<super::link::Link>), Refusal> {
        let enclave = self.resolve(&spec.enclave)?;
        Self::authorize_owner(
            peer,
            enclave.owner_uid,
            &format!("enclave {} ({})", enclave.id, enclave.name),
        )?;
        if enclave.state != EnclaveState::Running {
            let hint = if enclave.state == EnclaveState::Crashed {
                "; destroy it and create a new one"
            } else {
                ""
            };
            return Err(refuse(
                ErrorCode::Conflict,
                format!("enclave {} is {}{hint}", enclave.name, enclave.state),
            ));
        }
        let link = self.live_link(enclave.id).ok_or_else(|| {
            refuse(
                ErrorCode::Unavailable,
                format!(
                    "enclave {}: control process not connected (yet)",
                    enclave.name
                ),
            )
        })?;
        Ok((enclave, link))
    }

    /// Record a new app (state `starting`, named after `program` unless the
    /// spec names it) and make its log directory, owned by the peer.
    fn record_app(
        &self,
        peer: &PeerCred,
        spec: &LaunchSpec,
        enclave: &EnclaveRecord,
        program: &str,
    ) -> Result<AppRecord, Refusal> {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| program.rsplit('/').next().unwrap_or(program).to_string());
        let rec = self.tx(|t| {
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.next_app_id = h.counters.next_app_id.max(1);
            let id = h.counters.next_app_id;
            h.counters.next_app_id += 1;
            h.counters.apps_launched += 1;
            t.put_header(&h)?;
            let dir = self.paths.app_dir(id);
            let mut rec = AppRecord {
                id,
                name: name.clone(),
                enclave: enclave.id,
                owner_uid: peer.uid,
                owner_gid: peer.gid,
                argv: spec.argv.clone(),
                cwd: spec.cwd.clone(),
                state: AppState::Starting,
                procs: vec![],
                exit: None,
                detail: None,
                started_ms: now_ms(),
                ended_ms: None,
                stdout_log: dir.join("stdout").display().to_string(),
                stderr_log: dir.join("stderr").display().to_string(),
                joined: None,
                slurm: None,
                rev: 0,
            };
            t.put_app(&mut rec)?;
            Ok::<_, TxError>(rec)
        })?;
        let dir = self.paths.app_dir(rec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::os::unix::fs::chown(&dir, Some(peer.uid), Some(peer.gid));
        Ok(rec)
    }

    /// An app's environment: a default `PATH` and the `HOBBES_*` variables,
    /// then the spec's own (which win).
    fn app_env(
        &self,
        spec: &LaunchSpec,
        enclave: &EnclaveRecord,
        app: AppId,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            (ENV_ENCLAVE_ID.into(), enclave.id.to_string()),
            (ENV_APP_ID.into(), app.to_string()),
            (ENV_SOCKET.into(), self.paths.socket().display().to_string()),
            (ENV_NIS.into(), enclave.nis_dir.clone()),
        ];
        for (k, v) in &spec.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Record an app's start: its pid inside the enclave and on the host. Runs
    /// on the enclave's link thread, so it is recorded before that thread
    /// handles the app's exit.
    pub fn app_started(&self, enclave: EnclaveId, id: AppId, local_pid: u32) {
        let control = self
            .nis
            .reader()
            .enclave(enclave)
            .ok()
            .flatten()
            .and_then(|e| e.control_pid);
        let global = if self.privileged {
            sys::host_pid_of_child(control.unwrap_or(0), local_pid)
        } else {
            Some(local_pid)
        };
        let _ = self.tx(|t| {
            let Some(mut r) = t.app(id)? else {
                return Ok(());
            };
            if r.state == AppState::Starting {
                r.state = AppState::Running;
            }
            r.procs = vec![ProcId {
                local: local_pid,
                global: global.unwrap_or(0),
            }];
            if let (Some(g), false) = (global, r.state.is_final()) {
                t.put_proc(&ProcRecord {
                    global_pid: g,
                    enclave,
                    local_pid,
                    app: id,
                })?;
            }
            t.put_app(&mut r)?;
            Ok::<_, TxError>(())
        });
    }

    fn app_failed(&self, id: AppId, why: &str) {
        let ended = self.tx(|t| {
            let Some(mut r) = t.app(id)? else {
                return Ok(None);
            };
            r.state = AppState::Failed;
            r.detail = Some(why.to_string());
            r.ended_ms = Some(now_ms());
            t.put_app(&mut r)?;
            Ok::<_, TxError>(Some(r))
        });
        if let Ok(Some(r)) = ended {
            self.notify_end(r);
        }
    }

    /// Record an app's end: an exit status, or none when it was lost.
    pub fn app_ended(&self, id: AppId, status: Option<ExitStatus>, detail: Option<String>) {
        let ended = self.tx(|t| {
            let Some(mut r) = t.app(id)? else {
                return Ok(None);
            };
            if r.state.is_final() {
                return Ok(None);
            }
            r.state = match status {
                Some(ExitStatus::Code(_)) => AppState::Exited,
                Some(ExitStatus::Signal(_)) => AppState::Crashed,
                None => AppState::Lost,
            };
            r.exit = status;
            r.detail = detail.clone().or(r.detail.take());
            r.ended_ms = Some(now_ms());
            for p in &r.procs {
                t.delete_proc(p.global)?;
            }
            t.put_app(&mut r)?;
            Ok::<_, TxError>(Some(r))
        });
        if let Ok(Some(r)) = ended {
            tracing::info!(app = id, state = %r.state, exit = ?r.exit, "app ended");
            self.notify_end(r);
        }
    }

    fn notify_end(&self, rec: AppRecord) {
        self.subs.notify_end(&rec);
    }

    /// Output the control process forwarded for `app` (called by the link
    /// thread): queued for each subscriber that wants output; a subscriber more
    /// than 8 MiB behind loses the chunk (counted and reported as
    /// `output_dropped`; the log file keeps everything).
    pub fn app_output(&self, app: AppId, stream: Stream, data: Vec<u8>) {
        self.subs.deliver_output(app, stream, data);
    }

    /// Forget the oldest finished apps beyond `MAX_FINISHED_APPS` (4096), and their logs,
    /// so a long-running node's NIS stays bounded.
    pub fn prune_finished_apps(&self) {
        let Ok(apps) = self.nis.reader().apps() else {
            return;
        };
        let mut finished: Vec<_> = apps.into_iter().filter(|a| a.state.is_final()).collect();
        if finished.len() <= MAX_FINISHED_APPS {
            return;
        }
        finished.sort_by_key(|a| (a.ended_ms, a.id));
        let doomed: Vec<AppId> = finished[..finished.len() - MAX_FINISHED_APPS]
            .iter()
            .map(|a| a.id)
            .collect();
        let pruned = self.tx(|t| {
            for id in &doomed {
                t.delete_app(*id)?;
            }
            Ok::<_, TxError>(())
        });
        if pruned.is_ok() {
            for id in &doomed {
                super::remove_tree(&self.paths.app_dir(*id));
            }
            tracing::info!(pruned = doomed.len(), "pruned old finished apps");
        }
    }

    /// Serve `kill_app`: send `signal` (1 to 64, else `invalid_spec`) to app
    /// `id` through its enclave's control process. Root or the app's owner only
    /// (`permission_denied`); `not_found` for an unknown app, `conflict` when it
    /// has already ended or the control process could not signal it,
    /// `unavailable` when the enclave is not connected or does not answer in 10 s.
    pub fn kill_app(&self, peer: &PeerCred, id: AppId, signal: i32) -> Result<(), Refusal> {
        if !(1..=64).contains(&signal) {
            return Err(refuse(
                ErrorCode::InvalidSpec,
                format!("{signal} is not a signal number (1-64)"),
            ));
        }
        let app = self
            .nis
            .reader()
            .app(id)
            .map_err(internal)?
            .ok_or_else(|| {
                refuse(
                    ErrorCode::NotFound,
                    format!("no app {id} (hobbes list-apps shows them)"),
                )
            })?;
        Self::authorize_owner(peer, app.owner_uid, &format!("app {id} ({})", app.name))?;
        if app.state.is_final() {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("app {id} ({}) has already ended: {}", app.name, app.state),
            ));
        }
        if let Some(joined) = app.joined {
            // No control process started it: signal the host process itself.
            if !sys::same_process_alive(joined.pid, joined.start_time) {
                return Err(refuse(
                    ErrorCode::Conflict,
                    format!(
                        "app {id} ({}): its process {} has ended",
                        app.name, joined.pid
                    ),
                ));
            }
            return sys::kill(joined.pid, signal).map_err(|e| {
                refuse(
                    ErrorCode::Conflict,
                    format!("cannot signal app {id} ({}): {e}", app.name),
                )
            });
        }
        let link = self.live_link(app.enclave).ok_or_else(|| {
            refuse(
                ErrorCode::Unavailable,
                format!("enclave {} is not connected", app.enclave),
            )
        })?;
        match link.call(
            |seq| ControlDown::Signal {
                seq,
                app: id,
                signal,
            },
            Duration::from_secs(10),
        ) {
            Ok(ControlUp::Done { error: None, .. }) => Ok(()),
            Ok(ControlUp::Done { error: Some(e), .. }) => Err(refuse(ErrorCode::Conflict, e)),
            Ok(other) => Err(internal(format!("unexpected reply {other:?}"))),
            Err(e) => Err(refuse(ErrorCode::Unavailable, e)),
        }
    }

    /// The app's record once it has ended (blocks).
    pub fn wait_app(&self, id: AppId) -> Result<AppRecord, Refusal> {
        let sub = self.subscribe(id, false);
        let rec = self.nis.reader().app(id).map_err(internal)?;
        let Some(rec) = rec else {
            self.subs.forget(id);
            return Err(refuse(ErrorCode::NotFound, format!("no app {id}")));
        };
        if rec.state.is_final() {
            return Ok(rec);
        }
        loop {
            match sub.rx.recv() {
                Ok(AppEvent::Ended(r)) => return Ok(*r),
                Ok(_) => {}
                Err(_) => return Err(refuse(ErrorCode::Unavailable, "leviathan is shutting down")),
            }
        }
    }
}

impl Daemon {
    /// Serve `join_enclave` (protocol.md §4.1): root only
    /// (`permission_denied`); the enclave must be running (`conflict`) and
    /// native (`invalid_spec`: a guest cannot be joined), the process must
    /// exist (`invalid_spec`). The driver moves it into the enclave's app
    /// cgroups; it is recorded as a running app with its Slurm tag, owned by
    /// `owner` (default: the process's uid and gid now), and
    /// watched until it ends (`super::bound`). Returns the app, the pid whose
    /// namespaces the caller enters, and which. With `defer_cgroups` the
    /// process's cgroups wait for [`Daemon::place_task`].
    #[allow(clippy::too_many_arguments)] // one per field of the request
    pub fn join_enclave(
        &self,
        peer: &PeerCred,
        r: &hobbes_proto::msg::EnclaveRef,
        pid: u32,
        argv: Vec<String>,
        slurm: Option<SlurmTask>,
        owner: Option<hobbes_proto::msg::Owner>,
        defer_cgroups: bool,
    ) -> Result<(AppRecord, u32, Vec<String>), Refusal> {
        if peer.uid != 0 {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: only root may move a process into an enclave (join_enclave; the Slurm plugin runs as root in slurmstepd); you are uid {}", peer.uid),
            ));
        }
        check_argv(&argv, &[])?;
        let enclave = self.resolve(r)?;
        if enclave.state != EnclaveState::Running {
            return Err(refuse(
                ErrorCode::Conflict,
                format!("enclave {} is {}, not running", enclave.name, enclave.state),
            ));
        }
        let driver = self
            .driver(enclave.kind)
            .ok_or_else(|| internal(format!("no driver for {} enclaves", enclave.kind)))?;
        let start_time = (pid > 1 && pid != std::process::id())
            .then(|| sys::proc_start_time(pid))
            .flatten()
            .ok_or_else(|| {
                refuse(
                    ErrorCode::InvalidSpec,
                    format!(
                        "join_enclave: there is no process {pid} to move into enclave {}",
                        enclave.name
                    ),
                )
            })?;
        if enclave.kind != EnclaveKind::Native || !defer_cgroups {
            driver.join(&enclave, pid).map_err(|e| match enclave.kind {
                EnclaveKind::Native => internal(format!(
                    "cannot move process {pid} into enclave {}: {e}",
                    enclave.name
                )),
                _ => refuse(ErrorCode::InvalidSpec, e),
            })?;
        }
        let joined = BoundProcess {
            pid,
            start_time: Some(start_time),
        };
        let rec = self.record_joined(&enclave, joined, argv, slurm, owner)?;
        self.joins.recorded();
        super::bound::bindings_changed();
        tracing::info!(app = rec.id, enclave = enclave.id, pid, slurm = ?rec.slurm, "process joined the enclave");
        let namespaces = if self.privileged {
            let mut ns = vec![];
            if !enclave.host_ipc {
                ns.push("ipc".to_string());
            }
            ns.extend(["uts", "pid", "mnt"].map(String::from));
            ns
        } else {
            vec![]
        };
        Ok((rec, enclave.control_pid.unwrap_or(0), namespaces))
    }

    /// Serve `place_task` (protocol.md §4.1): root only; `pid` must be a
    /// running joined app of the enclave (`not_found`). The process goes
    /// into the enclave's cgroups; on a node where Slurm confines jobs
    /// (`--slurm-cgroups`), a step's enclave nests in the step's cgroups
    /// the process is in (made at the first task, recorded in the
    /// enclave's `step_cgroups`), in each hierarchy where Slurm confines it.
    pub fn place_task(
        &self,
        peer: &PeerCred,
        r: &hobbes_proto::msg::EnclaveRef,
        pid: u32,
    ) -> Result<AppRecord, Refusal> {
        if peer.uid != 0 {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: only root may place a process in an enclave's cgroups (place_task); you are uid {}", peer.uid),
            ));
        }
        let enclave = self.resolve(r)?;
        // slurmstepd places a task (post_fork) while the task itself joins
        // (task_init_privileged): wait, bounded, for that join.
        let deadline = Instant::now() + JOIN_WAIT;
        let app = loop {
            let seen = self.joins.count();
            let found = self
                .nis
                .reader()
                .apps()
                .map_err(internal)?
                .into_iter()
                .find(|a| {
                    a.enclave == enclave.id
                        && !a.state.is_final()
                        && a.joined.as_ref().is_some_and(|j| j.pid == pid)
                });
            if let Some(app) = found {
                break app;
            }
            if !self.joins.wait_after(seen, deadline) {
                return Err(refuse(
                    ErrorCode::NotFound,
                    format!(
                        "process {pid} has not joined enclave {} (join_enclave first; waited {JOIN_WAIT:?})",
                        enclave.name
                    ),
                ));
            }
        };
        let driver = self
            .driver(enclave.kind)
            .ok_or_else(|| internal(format!("no driver for {} enclaves", enclave.kind)))?;
        // Where Slurm put it, before the enclave's own cgroups move it.
        let nest = match (&enclave.slurm, self.cfg.slurm_cgroups) {
            (Some(step), true) => {
                StepNest::for_task(pid, step.job_id, &step.cgroup_name(), &enclave.name)
            }
            _ => None,
        };
        driver.join(&enclave, pid).map_err(|e| {
            internal(format!(
                "cannot move process {pid} into enclave {}: {e}",
                enclave.name
            ))
        })?;
        if let Some(nest) = nest {
            let dirs = nest.dirs();
            if enclave.step_cgroups != dirs {
                self.tx(|t| {
                    let mut e = t
                        .enclave(enclave.id)?
                        .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no enclave {r}")))?;
                    e.step_cgroups = dirs.clone();
                    t.put_enclave(&mut e)?;
                    Ok(())
                })?;
            }
            nest.create(&enclave.cores, enclave.mem_bytes)
                .and_then(|()| nest.add_pid(pid))
                .map_err(|e| {
                    refuse(
                        ErrorCode::InvalidSpec,
                        format!(
                            "cannot place process {pid} in enclave {} inside its Slurm step's cgroups: {e}",
                            enclave.name
                        ),
                    )
                })?;
            tracing::info!(app = app.id, enclave = enclave.id, pid, cgroups = ?dirs, "task placed in the enclave inside its Slurm step");
        }
        Ok(app)
    }

    /// An enclave nested in a Slurm step's cgroups gives them up once no
    /// task of it runs: Slurm removes the step's cgroups right after its
    /// tasks end (before the plugin's step-end hook), and a directory of
    /// ours inside would keep it from doing so.
    pub(super) fn release_step_cgroups_if_idle(&self, enclave: EnclaveId) {
        let reader = self.nis.reader();
        let Ok(Some(rec)) = reader.enclave(enclave) else {
            return;
        };
        if rec.step_cgroups.is_empty() {
            return;
        }
        let running = reader.apps().unwrap_or_default().into_iter().any(|a| {
            a.enclave == enclave
                && a.joined.is_some()
                && !a.state.is_final()
                && a.state != AppState::Lost
        });
        if running {
            return;
        }
        if let Err(e) = StepNest::from_dirs(&rec.step_cgroups).release() {
            tracing::warn!(enclave, error = %e, "cannot remove the enclave's cgroups in its Slurm step");
            return;
        }
        let _ = self.tx(|t| {
            if let Some(mut e) = t.enclave(enclave)? {
                e.step_cgroups.clear();
                t.put_enclave(&mut e)?;
            }
            Ok(())
        });
        tracing::info!(
            enclave,
            "the enclave's last task ended: its cgroups in the Slurm step are removed"
        );
    }

    /// Record a joined process as a running app of `enclave`, with its
    /// process in the global process map.
    fn record_joined(
        &self,
        enclave: &EnclaveRecord,
        joined: BoundProcess,
        argv: Vec<String>,
        slurm: Option<SlurmTask>,
        owner: Option<hobbes_proto::msg::Owner>,
    ) -> Result<AppRecord, Refusal> {
        let (uid, gid) = owner.map_or_else(|| ids_of(joined.pid), |o| (o.uid, o.gid));
        let name = match &slurm {
            Some(t) => format!("task-{}", t.task_id),
            None => argv
                .first()
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                .unwrap_or_else(|| format!("pid-{}", joined.pid)),
        };
        self.tx(|t| {
            let mut h = t.header()?.ok_or_else(|| internal("NIS has no header"))?;
            h.counters.next_app_id = h.counters.next_app_id.max(1);
            let id = h.counters.next_app_id;
            h.counters.next_app_id += 1;
            h.counters.apps_launched += 1;
            t.put_header(&h)?;
            let mut rec = AppRecord {
                id,
                name: name.clone(),
                enclave: enclave.id,
                owner_uid: uid,
                owner_gid: gid,
                argv: argv.clone(),
                cwd: None,
                state: AppState::Running,
                procs: vec![ProcId {
                    local: 0,
                    global: joined.pid,
                }],
                exit: None,
                detail: Some("joined (its output goes to its own stdout and stderr)".into()),
                started_ms: now_ms(),
                ended_ms: None,
                stdout_log: String::new(),
                stderr_log: String::new(),
                joined: Some(joined),
                slurm: slurm.clone(),
                rev: 0,
            };
            t.put_proc(&ProcRecord {
                global_pid: joined.pid,
                enclave: enclave.id,
                local_pid: 0,
                app: id,
            })?;
            t.put_app(&mut rec)?;
            Ok::<_, TxError>(rec)
        })
    }

    /// Serve `task_exited`: root only; app `id` must be a joined app
    /// (`invalid_spec` otherwise) that has not ended with a known status
    /// (`conflict`). A joined app already marked `lost` (its end seen by the
    /// daemon before the report came) takes the reported status.
    pub fn task_exited(
        &self,
        peer: &PeerCred,
        id: AppId,
        exit: ExitStatus,
    ) -> Result<AppRecord, Refusal> {
        if peer.uid != 0 {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("permission denied: only root may report the end of a joined app; you are uid {}", peer.uid),
            ));
        }
        let ended = self.tx(|t| {
            let mut r = t.app(id)?.ok_or_else(|| {
                refuse(ErrorCode::NotFound, format!("no app {id} (hobbes list-apps shows them)"))
            })?;
            if r.joined.is_none() {
                return Err(refuse(
                    ErrorCode::InvalidSpec,
                    format!("app {id} ({}) was launched, not joined: its control process reports its end", r.name),
                )
                .into());
            }
            match r.state {
                AppState::Running | AppState::Starting => {}
                AppState::Lost => {
                    // Seen ending by the daemon first; the joiner knows how.
                    r.detail = None;
                    r.state = exit_state(exit);
                    r.exit = Some(exit);
                    t.put_app(&mut r)?;
                    return Ok((r, false));
                }
                other => {
                    return Err(refuse(
                        ErrorCode::Conflict,
                        format!("app {id} ({}) has already ended: {other}", r.name),
                    )
                    .into())
                }
            }
            r.state = exit_state(exit);
            r.exit = Some(exit);
            r.ended_ms = Some(now_ms());
            for p in &r.procs {
                t.delete_proc(p.global)?;
            }
            t.put_app(&mut r)?;
            Ok((r, true))
        })?;
        let (rec, first) = ended;
        tracing::info!(app = id, exit = %exit, "joined app ended");
        self.release_step_cgroups_if_idle(rec.enclave);
        if first {
            self.notify_end(rec.clone());
        }
        Ok(rec)
    }

    /// A joined app's process ended, seen by the daemon (`super::bound`):
    /// unless its joiner reported the status first, it is `lost` until the
    /// report comes.
    pub(super) fn joined_process_ended(&self, id: AppId) {
        self.app_ended(
            id,
            None,
            Some("its process ended; its exit status was not reported (yet)".into()),
        );
        if let Ok(Some(app)) = self.nis.reader().app(id) {
            self.release_step_cgroups_if_idle(app.enclave);
        }
    }
}

/// How long `place_task` waits for the join of the process it places.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// A count of recorded joins, and a way to wait for the next one.
#[derive(Default)]
pub(super) struct JoinEvents {
    count: Mutex<u64>,
    changed: std::sync::Condvar,
}

impl JoinEvents {
    /// A join was recorded.
    fn recorded(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Joins recorded so far.
    fn count(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until more than `seen` joins were recorded (true), or until
    /// `deadline` (false).
    fn wait_after(&self, seen: u64, deadline: Instant) -> bool {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count == seen {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            count = self
                .changed
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The real uid and gid of process `pid` (root's when they cannot be read).
fn ids_of(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (first("Uid:"), first("Gid:"))
}

/// The state an exit status puts an app in.
fn exit_state(exit: ExitStatus) -> AppState {
    match exit {
        ExitStatus::Code(_) => AppState::Exited,
        ExitStatus::Signal(_) => AppState::Crashed,
    }
}

/// Check argv and environment: at most 1 MiB together (`too_large`), no
/// NUL bytes, no empty or `=` variable names (`invalid_spec`).
fn check_argv(argv: &[String], env: &[(String, String)]) -> Result<(), Refusal> {
    let size: usize = argv.iter().map(|a| a.len()).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > MAX_LAUNCH_BYTES {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("argv and environment are {size} bytes; the limit is {MAX_LAUNCH_BYTES}"),
        ));
    }
    if argv
        .iter()
        .chain(env.iter().flat_map(|(k, v)| [k, v]))
        .any(|s| s.contains('\0'))
        || env.iter().any(|(k, _)| k.is_empty() || k.contains('='))
    {
        return Err(refuse(ErrorCode::InvalidSpec, "argv and environment may not contain NUL bytes, and variable names may not be empty or contain '='"));
    }
    Ok(())
}

/// Check a launch's size (`too_large`), argv and environment
/// (`invalid_spec`); returns the program.
fn check_launch_spec(spec: &LaunchSpec) -> Result<&str, Refusal> {
    check_argv(&spec.argv, &spec.env)?;
    spec.argv
        .first()
        .filter(|p| !p.is_empty())
        .map(String::as_str)
        .ok_or_else(|| refuse(ErrorCode::InvalidSpec, "nothing to launch: argv is empty"))
}
