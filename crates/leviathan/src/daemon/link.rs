//! Links to enclave control processes, and enclave health.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hobbes_proto::control::{AppReport, ControlDown, ControlUp, Seq};
use hobbes_proto::frame::{read_frame, write_frame, FrameError};
use hobbes_proto::model::{AppState, EnclaveId, EnclaveState};

use super::{now_ms, Daemon};
use crate::sys;

/// One control process's connection.
pub struct Link {
    pub enclave: EnclaveId,
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<Seq, mpsc::Sender<ControlUp>>>,
    seq: AtomicU64,
    last_heartbeat: Mutex<Instant>,
    closed: AtomicBool,
}

impl Link {
    pub fn send(&self, msg: &ControlDown) -> Result<(), String> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *w, msg).map_err(|e| format!("enclave {} control link: {e}", self.enclave))
    }

    /// Send a command and wait for its reply.
    pub fn call(
        &self,
        make: impl FnOnce(Seq) -> ControlDown,
        timeout: Duration,
    ) -> Result<ControlUp, String> {
        self.call_with_fds(make, &[], timeout)
    }

    /// Send a command carrying descriptors and wait for its reply.
    pub fn call_with_fds(
        &self,
        make: impl FnOnce(Seq) -> ControlDown,
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<ControlUp, String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, tx);
        let sent = if fds.is_empty() {
            self.send(&make(seq))
        } else {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            hobbes_proto::fdpass::write_frame_with_fds(&w, &make(seq), fds)
                .map_err(|e| format!("enclave {} control link: {e}", self.enclave))
        };
        let result = sent.and_then(|_| {
            rx.recv_timeout(timeout).map_err(|_| {
                if self.closed.load(Ordering::SeqCst) {
                    format!("enclave {}: control process went away", self.enclave)
                } else {
                    format!(
                        "enclave {}: control process did not answer within {timeout:?}",
                        self.enclave
                    )
                }
            })
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        result
    }

    fn answer(&self, seq: Seq, msg: ControlUp) {
        if let Some(tx) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
        {
            let _ = tx.send(msg);
        }
    }

    pub fn since_heartbeat(&self) -> Duration {
        self.last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wake every waiter: their senders drop.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
}

/// The link service's state: the live links to control processes, and the
/// enclaves found alive at start whose control process has until a deadline to
/// reattach. Each table has its own lock; neither is held while calling out.
#[derive(Default)]
pub struct Links {
    /// Live links, by enclave, and a condition for "a link appeared".
    live: Mutex<HashMap<EnclaveId, Arc<Link>>>,
    changed: Condvar,
    /// Enclaves found alive at start, waiting for their control process to reattach.
    reattach_deadline: Mutex<HashMap<EnclaveId, Instant>>,
}

impl Links {
    /// No links and no enclave waited for.
    pub fn new() -> Links {
        Links::default()
    }

    /// The link to enclave `id`, if it is attached now.
    pub fn get(&self, id: EnclaveId) -> Option<Arc<Link>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every live link.
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Make `link` enclave `enclave`'s current link (closing an older one) and
    /// wake whoever waits for it.
    fn attach(&self, enclave: EnclaveId, link: Arc<Link>) {
        if let Some(old) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(enclave, link)
        {
            old.close();
        }
        // After the link is in place, so `live_link` never sees neither.
        self.forget_reattach(enclave);
        self.changed.notify_all();
    }

    /// Wait (bounded) for enclave `id`'s link to appear.
    pub fn wait_for(&self, id: EnclaveId, timeout: Duration) -> Option<Arc<Link>> {
        let deadline = Instant::now() + timeout;
        let mut links = self.live.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = links.get(&id) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            links = self
                .changed
                .wait_timeout(links, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Forget enclave `id`'s link and close it.
    pub fn remove(&self, id: EnclaveId) {
        if let Some(l) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            l.close();
        }
    }

    /// Forget `link` if it is still enclave `enclave`'s current link; says
    /// whether it was (then its end means the control process died).
    fn remove_if_current(&self, enclave: EnclaveId, link: &Arc<Link>) -> bool {
        let mut links = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if links.get(&enclave).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&enclave);
            true
        } else {
            false
        }
    }

    /// Wait for enclave `id`'s control process to reattach until `deadline`
    /// (after a daemon restart).
    pub fn expect_reattach(&self, id: EnclaveId, deadline: Instant) {
        self.reattach_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, deadline);
    }

    /// How long enclave `id`'s reattach may still take, if one is awaited.
    fn reattach_left(&self, id: EnclaveId) -> Option<Duration> {
        let deadline = self
            .reattach_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied();
        deadline?.checked_duration_since(Instant::now())
    }

    /// Stop waiting for enclave `id` to reattach.
    pub fn forget_reattach(&self, id: EnclaveId) {
        self.reattach_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// The enclaves whose reattach deadline passed, no longer waited for.
    fn take_overdue(&self) -> Vec<EnclaveId> {
        let mut pending = self
            .reattach_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ids: Vec<_> = pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            pending.remove(id);
        }
        ids
    }
}

impl Daemon {
    /// The live link to enclave `id`'s control process, if it is attached now
    /// (no waiting; see [`Daemon::live_link`] for the variant that waits after
    /// a restart).
    pub fn link(&self, id: EnclaveId) -> Option<Arc<Link>> {
        self.links.get(id)
    }

    /// The link to enclave `id`; right after a daemon restart, wait (bounded)
    /// for its control process to reattach rather than refuse at once.
    pub fn live_link(&self, id: EnclaveId) -> Option<Arc<Link>> {
        if let Some(l) = self.link(id) {
            return Some(l);
        }
        let left = self.links.reattach_left(id)?;
        self.wait_for_link(id, left)
    }

    /// Wait (bounded) for enclave `id`'s control process to attach.
    pub fn wait_for_link(&self, id: EnclaveId, timeout: Duration) -> Option<Arc<Link>> {
        self.links.wait_for(id, timeout)
    }

    /// Forget a link (the enclave is going away).
    pub fn drop_link(&self, id: EnclaveId) {
        self.links.remove(id);
    }

    /// Accept control processes on `control.sock`.
    pub fn serve_control(self: &Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming().flatten() {
            let d = self.clone();
            let _ = std::thread::Builder::new()
                .name("control-link".into())
                .spawn(move || d.control_connection(stream));
        }
    }

    fn control_connection(self: Arc<Self>, mut stream: UnixStream) {
        let Ok(peer) = sys::peer_cred(&stream) else {
            return;
        };
        let Some((enclave, apps)) = self.admit(&mut stream, peer.pid) else {
            return;
        };
        let Some(link) = self.open_link(&stream, enclave, &apps) else {
            return;
        };
        tracing::info!(
            enclave,
            pid = peer.pid,
            apps = apps.len(),
            "control process attached"
        );
        loop {
            match read_frame(&mut stream) {
                Ok(msg) => self.handle_control_message(&link, msg),
                Err(e @ FrameError::Malformed(_)) => {
                    tracing::warn!(enclave, error = %e, "bad message from control process");
                }
                Err(_) => break,
            }
        }
        // The link is gone. If it is still the current one, the control process died.
        let current = self.links.remove_if_current(enclave, &link);
        link.close();
        if current && !self.is_shutting_down() {
            self.enclave_crashed(
                enclave,
                "control process connection lost (the control process died)",
            );
        }
    }

    /// The handshake: the first frame must be an `attach` for a known
    /// enclave with its credential. Returns the enclave and the apps the
    /// control process reports; `None` (logged) hangs up.
    fn admit(&self, stream: &mut UnixStream, pid: u32) -> Option<(EnclaveId, Vec<AppReport>)> {
        let (enclave, apps, credential) = match read_frame::<_, ControlUp>(stream) {
            Ok(ControlUp::Attach {
                enclave,
                apps,
                credential,
            }) => (enclave, apps, credential),
            Ok(other) => {
                tracing::warn!(pid, msg = ?other, "control connection did not start with attach");
                return None;
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "bad frame on control socket");
                return None;
            }
        };
        let Ok(Some(rec)) = self.nis.reader().enclave(enclave) else {
            tracing::warn!(enclave, pid, "attach for unknown enclave refused");
            return None;
        };
        if let Err(why) = self.admit_link(&rec, &credential, pid) {
            tracing::warn!(enclave, pid, state = %rec.state, "attach refused: {why}");
            return None;
        }
        Some((enclave, apps))
    }

    /// Welcome an admitted control process, reconcile the apps it reports,
    /// mark its enclave running and make the link the enclave's current one.
    fn open_link(
        &self,
        stream: &UnixStream,
        enclave: EnclaveId,
        apps: &[AppReport],
    ) -> Option<Arc<Link>> {
        let writer = stream.try_clone().ok()?;
        let link = Arc::new(Link {
            enclave,
            writer: Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            last_heartbeat: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        });
        link.send(&ControlDown::Welcome {
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
        })
        .ok()?;
        self.reconcile_reported_apps(enclave, apps);
        if let Err(e) = self.nis.update(|t| -> Result<(), hobbes_nis::NisError> {
            if let Some(mut r) = t.enclave(enclave)? {
                r.state = EnclaveState::Running;
                r.last_heartbeat_ms = now_ms();
                t.put_enclave(&mut r)?;
            }
            Ok(())
        }) {
            tracing::error!(enclave, error = %e, "cannot record attach");
            return None;
        }
        self.links.attach(enclave, link.clone());
        Some(link)
    }

    /// One message from an enclave's control process.
    fn handle_control_message(&self, link: &Link, msg: ControlUp) {
        let enclave = link.enclave;
        match msg {
            ControlUp::Heartbeat { .. } => {
                *link
                    .last_heartbeat
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            ControlUp::Started {
                seq,
                app,
                local_pid,
            } => {
                self.app_started(enclave, app, local_pid);
                link.answer(seq, msg)
            }
            ControlUp::LaunchFailed { seq, .. }
            | ControlUp::Pong { seq }
            | ControlUp::Done { seq, .. } => link.answer(seq, msg),
            ControlUp::Exited {
                app,
                status,
                detail,
                ..
            } => {
                // The agent's word on the end (an LWK's guest fault and call
                // summary) becomes the app's `detail`, as a launch error does.
                self.app_ended(app, Some(status), detail);
                let _ = link.send(&ControlDown::Forget { app });
            }
            ControlUp::Output {
                app,
                stream: s,
                data,
            } => self.app_output(app, s, data),
            ControlUp::Fatal { reason } => {
                // Marked now, with the agent's reason; the link's end (the
                // agent exits next) then finds the enclave crashed already.
                self.drop_link(enclave);
                self.enclave_crashed(enclave, &reason);
            }
            ControlUp::Attach { .. } => {
                tracing::warn!(enclave, "second attach on one link ignored")
            }
        }
    }

    /// Make a new secret for enclave `id`'s control agent and keep it, readable
    /// by the daemon's user only, beside the enclave's other state (so a
    /// restarted daemon still admits the agent).
    pub(super) fn new_control_credential(
        &self,
        id: EnclaveId,
    ) -> std::io::Result<hobbes_proto::control::Credential> {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.paths.control_credential(id);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())?;
        Ok(hobbes_proto::control::Credential(secret))
    }

    /// Enclave `id`'s control credential, if it has one on file.
    fn control_credential(&self, id: EnclaveId) -> Option<hobbes_proto::control::Credential> {
        std::fs::read_to_string(self.paths.control_credential(id))
            .ok()
            .map(|s| hobbes_proto::control::Credential(s.trim().to_string()))
            .filter(|c| !c.is_empty())
    }

    /// Only the agent the daemon started for this enclave may speak for it.
    /// It proves that with the credential it was given at start (over any
    /// stream: the peer's pid plays no part). An enclave started before
    /// credentials existed has none on file: its control process is then
    /// recognised by pid, as before.
    fn admit_link(
        &self,
        rec: &hobbes_proto::model::EnclaveRecord,
        presented: &hobbes_proto::control::Credential,
        peer_pid: u32,
    ) -> Result<(), String> {
        if !matches!(rec.state, EnclaveState::Starting | EnclaveState::Running) {
            return Err(format!("the enclave is {}", rec.state));
        }
        match self.control_credential(rec.id) {
            Some(expected) if expected.matches(presented) => Ok(()),
            Some(_) if presented.is_empty() => Err("no credential presented".into()),
            Some(_) => Err("wrong credential".into()),
            None if rec.control_pid == Some(peer_pid) => Ok(()),
            None => Err(format!(
                "no credential on file and pid {peer_pid} is not the control process ({:?})",
                rec.control_pid
            )),
        }
    }

    /// After (re)attach: apps the control process reports ended while no
    /// daemon listened get their exit recorded; apps it does not know are lost.
    /// Joined apps (`join_enclave`) are not its to know: their processes are
    /// watched by the daemon (`bound.rs`).
    fn reconcile_reported_apps(&self, enclave: EnclaveId, reports: &[AppReport]) {
        let Ok(apps) = self.nis.reader().apps() else {
            return;
        };
        for app in apps
            .into_iter()
            .filter(|a| a.enclave == enclave && !a.state.is_final() && a.joined.is_none())
        {
            match reports.iter().find(|r| r.app == app.id) {
                Some(AppReport {
                    exit: Some(status),
                    detail,
                    ..
                }) => self.app_ended(app.id, Some(*status), detail.clone()),
                Some(_) => {}
                None if app.state == AppState::Starting => {}
                None => self.app_ended(
                    app.id,
                    None,
                    Some("the enclave's control process no longer knows this app".into()),
                ),
            }
        }
        for r in reports.iter().filter(|r| r.exit.is_some()) {
            if let Some(link) = self.link(enclave) {
                let _ = link.send(&ControlDown::Forget { app: r.app });
            }
        }
    }

    /// Detect enclaves whose heartbeats stopped, or that did not reattach;
    /// between checks, act on bound processes that end (`bound.rs`).
    pub fn health_loop(self: Arc<Self>) {
        let tick = Duration::from_millis((self.cfg.heartbeat_interval_ms / 2).clamp(5, 500));
        let timeout = self.heartbeat_timeout();
        let mut last_reader_check = Instant::now();
        // The tick's wait is spent watching the processes enclaves and joined apps are bound to.
        let mut bound = super::bound::BoundWatch::new();
        while !self.is_shutting_down() {
            bound.tick(&self, tick);
            for link in self.links.all() {
                let silent = link.since_heartbeat();
                if silent > timeout {
                    self.drop_link(link.enclave);
                    self.enclave_crashed(
                        link.enclave,
                        &format!(
                            "no heartbeat for {} ms (timeout {} ms)",
                            silent.as_millis(),
                            timeout.as_millis()
                        ),
                    );
                }
            }
            let overdue = self.links.take_overdue();
            for id in overdue {
                self.enclave_crashed(
                    id,
                    "control process did not reattach after the daemon restarted",
                );
            }
            if last_reader_check.elapsed() > Duration::from_secs(5) {
                self.prune_finished_apps();
                let cleared = self.nis.clear_stale_readers();
                if cleared > 0 {
                    tracing::info!(cleared, "cleared stale NIS reader slots");
                }
                last_reader_check = Instant::now();
            }
        }
    }
}

/// Reap the daemon's children (control processes it started), so none stays a zombie.
pub fn reap_children() {
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => {}
        }
    }
}
