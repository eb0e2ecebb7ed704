//! Client connections on `leviathan.sock`: decode, authorize, dispatch, answer.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hobbes_proto::control::ControlUp;
use hobbes_proto::fdpass::{write_frame_with_fds, FrameReader, ReadLimits};
use hobbes_proto::frame::{decode_payload, write_frame, FrameError};
use hobbes_proto::model::{AppId, AppState, Ownership};
use hobbes_proto::msg::{EnclaveRef, ErrorCode, NodeStatus, Request, Response};
use hobbes_proto::PROTOCOL_VERSION;
use std::os::fd::{AsFd, OwnedFd};

use super::apps::AppEvent;

/// What [`Daemon::dispatch`] made of one request.
enum Answer {
    /// One frame for the caller to write: the response or the refusal.
    Reply(Result<Response, Refusal>),
    /// The service wrote its answer on the stream itself.
    Written,
    /// The client can no longer be talked to: hang up.
    HangUp,
}
use super::{internal, refuse, Daemon, Refusal};
use crate::config::format_cpu_list;
use crate::sys::{self, PeerCred};

impl Daemon {
    /// The body of the `client-accept` thread: accept connections on the client
    /// socket for as long as the daemon runs, each admitted one (per-uid limits,
    /// protocol.md §7) served on a thread of its own. Out of descriptors, a new
    /// connection gets an `unavailable` answer from the reserve; other accept
    /// errors are logged and accepting goes on. Never returns.
    pub fn serve_clients(self: &Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.admit_client(stream),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.refuse_out_of_fds(&listener, &e)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => tracing::warn!(error = %e, "cannot accept a client"),
            }
        }
    }

    /// Give a new connection its thread, if its user may hold one more.
    fn admit_client(self: &Arc<Self>, mut stream: UnixStream) {
        let Ok(peer) = sys::peer_cred(&stream) else {
            return;
        };
        let ticket = match self.admission.admit(peer.uid) {
            Ok(t) => t,
            Err(why) => {
                if self.log_limiter.allow(peer.uid) {
                    tracing::info!(uid = peer.uid, pid = peer.pid, "{why}");
                }
                // The client reads this answer even when it already wrote its request.
                let _ = write_frame(&mut stream, &Response::error(ErrorCode::Unavailable, why));
                return;
            }
        };
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                d.client_connection(stream, peer);
                drop(ticket);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a client thread");
        }
    }

    /// `accept` failed for want of descriptors: take the waiting connection
    /// with a reserved descriptor and tell it so, rather than spin on `EMFILE`.
    fn refuse_out_of_fds(&self, listener: &UnixListener, e: &std::io::Error) {
        tracing::warn!(error = %e, "out of file descriptors: refusing a client");
        let answered = self.fd_reserve.with_one_released(|| {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = write_frame(
                    &mut stream,
                    &Response::error(
                        ErrorCode::Unavailable,
                        format!("leviathan is out of file descriptors ({e}); retry later"),
                    ),
                );
            }
        });
        if !answered {
            // No reserve left (shutting down): let the backlog wait instead of spinning.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            idle: Some(Duration::from_secs(self.cfg.client_idle_timeout_s)),
            frame: Some(Duration::from_millis(self.cfg.request_timeout_ms)),
        }
    }

    fn client_connection(&self, mut stream: UnixStream, peer: PeerCred) {
        let mut reader = FrameReader::new(self.read_limits());
        loop {
            // Descriptors ride along only with xemem_make; any others are closed when dropped.
            let (payload, fds) = match reader.read(&stream) {
                Ok(p) => p,
                Err(FrameError::Closed) => return,
                Err(FrameError::Idle(after)) => {
                    // Clients notice the hang-up before their next request and reconnect.
                    tracing::debug!(
                        pid = peer.pid,
                        uid = peer.uid,
                        ?after,
                        "idle client connection closed"
                    );
                    return;
                }
                Err(e) => {
                    // Not our protocol, a wrong version, an oversized or stalled
                    // frame, too many descriptors: say why and hang up; the
                    // stream can no longer be trusted.
                    if self.log_limiter.allow(peer.uid) {
                        tracing::warn!(pid = peer.pid, uid = peer.uid, error = %e, "bad frame from client");
                    }
                    let reply = match &e {
                        FrameError::TooLarge { .. } => Response::error(ErrorCode::TooLarge, e.to_string()),
                        FrameError::Io(io) if matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                            Response::error(
                                ErrorCode::Unavailable,
                                "leviathan is out of file descriptors: the descriptors sent with the request were lost; retry later",
                            )
                        }
                        _ => Response::error(ErrorCode::BadRequest, e.to_string()),
                    };
                    let _ = write_frame(&mut stream, &reply);
                    return;
                }
            };
            let req: Request = match decode_payload(&payload) {
                Ok(r) => r,
                Err(e) => {
                    let _ = write_frame(
                        &mut stream,
                        &Response::error(
                            ErrorCode::BadRequest,
                            format!("cannot decode request: {e}"),
                        ),
                    );
                    continue;
                }
            };
            tracing::debug!(op = req.op(), uid = peer.uid, pid = peer.pid, "request");
            let result = match self.dispatch(&mut stream, &peer, req, fds) {
                Answer::Reply(result) => result,
                Answer::Written => continue,
                Answer::HangUp => return,
            };
            let reply = result.unwrap_or_else(Response::Error);
            if let Response::Error(e) = &reply {
                if self.log_limiter.allow(peer.uid) {
                    tracing::info!(uid = peer.uid, code = ?e.code, message = %e.message, "request refused");
                }
            }
            if write_frame(&mut stream, &reply).is_err() {
                return;
            }
        }
    }

    /// Create an enclave for a client that waits for the answer. If the client
    /// hung up meanwhile (killed, interrupted), nobody will learn the outcome:
    /// undo it, so that what the client last saw (no answer: not created) is
    /// true and a retry does not find the name taken.
    fn create_enclave_for(
        &self,
        stream: &UnixStream,
        peer: &PeerCred,
        spec: hobbes_proto::spec::EnclaveSpec,
        slurm: Option<hobbes_proto::slurm::SlurmStep>,
        bound_to_pid: Option<u32>,
        step_cpus: Option<Vec<hobbes_proto::model::CoreId>>,
    ) -> Result<hobbes_proto::model::EnclaveRecord, super::Refusal> {
        let rec =
            self.create_enclave_with(peer, spec, slurm, bound_to_pid, step_cpus.as_deref())?;
        if sys::peer_hung_up(stream) {
            tracing::warn!(enclave = rec.id, name = %rec.name, pid = peer.pid, "the client went away before the enclave was created: undoing it");
            self.remove_enclave(&rec, "its creator went away before the answer")?;
            return Err(refuse(
                ErrorCode::Unavailable,
                "client went away; creation undone",
            ));
        }
        Ok(rec)
    }

    fn launch_streaming(
        &self,
        stream: &mut UnixStream,
        peer: &PeerCred,
        launch: &hobbes_proto::msg::LaunchSpec,
    ) -> Result<(), FrameError> {
        let (rec, sub) = match self.launch_app(peer, launch) {
            Ok(x) => x,
            Err(e) => return write_frame(stream, &Response::Error(e)),
        };
        let app = rec.id;
        write_frame(stream, &Response::App(Box::new(rec)))?;
        let Some(sub) = sub else { return Ok(()) };
        loop {
            let ev = match sub.rx.recv() {
                Ok(ev) => ev,
                Err(_) => {
                    return write_frame(
                        stream,
                        &Response::error(ErrorCode::Unavailable, "leviathan is shutting down"),
                    )
                }
            };
            sub.consumed(&ev);
            match ev {
                AppEvent::Output { stream: s, data } => write_frame(
                    stream,
                    &Response::Output {
                        app,
                        stream: s,
                        data,
                    },
                )?,
                AppEvent::Dropped { bytes } => {
                    write_frame(stream, &Response::OutputDropped { app, bytes })?
                }
                AppEvent::Ended(rec) => return write_frame(stream, &Response::AppExited(rec)),
            }
        }
    }

    /// Route one request to the service that serves it: every `Request`
    /// variant has exactly one arm here. Most are answered with one frame,
    /// which the caller writes ([`Answer::Reply`]); `xemem_get` (descriptors
    /// ride with the answer), `remora_launch` and a streamed `launch_app` (a
    /// stream of frames) write their answers themselves. `fds` are the
    /// descriptors that came with the request: only `xemem_make` takes any;
    /// for every other request they are closed here.
    fn dispatch(
        &self,
        stream: &mut UnixStream,
        peer: &PeerCred,
        req: Request,
        fds: Vec<OwnedFd>,
    ) -> Answer {
        let reply = match req {
            Request::Hello { .. } => Ok(Response::Hello {
                server: format!("leviathan {}", env!("CARGO_PKG_VERSION")),
                protocol: PROTOCOL_VERSION,
            }),
            Request::Status => self.status().map(|s| Response::Status(Box::new(s))),
            Request::Ping { enclave } => self.ping(&enclave),
            // Node resources.
            Request::ListCores => self
                .nis
                .reader()
                .cores()
                .map(|cores| Response::Cores { cores })
                .map_err(internal),
            Request::ListMemory => self
                .nis
                .reader()
                .memory()
                .map(|blocks| Response::Memory { blocks })
                .map_err(internal),
            // Enclaves (enclaves.rs).
            Request::ListEnclaves => self
                .nis
                .reader()
                .enclaves()
                .map(|enclaves| Response::Enclaves { enclaves })
                .map_err(internal),
            Request::GetEnclave { enclave } => self
                .resolve(&enclave)
                .map(|r| Response::Enclave(Box::new(r))),
            Request::CreateEnclave {
                spec,
                slurm,
                bound_to_pid,
                owner,
                step_cpus,
            } => Self::creator(peer, owner, "an enclave")
                .and_then(|creator| {
                    self.create_enclave_for(stream, &creator, spec, slurm, bound_to_pid, step_cpus)
                })
                .map(|r| Response::Enclave(Box::new(r))),
            Request::DestroyEnclave { enclave } => {
                self.destroy_enclave(peer, &enclave).map(|()| Response::Ok)
            }
            Request::AssignCpus { enclave, cpus } => self
                .assign_cpus(peer, &enclave, &cpus)
                .map(|r| Response::Enclave(Box::new(r))),
            Request::RevokeCpus { enclave, cores } => self
                .revoke_cpus(peer, &enclave, &cores)
                .map(|r| Response::Enclave(Box::new(r))),
            Request::AssignMemory { enclave, memory } => self
                .assign_memory(peer, &enclave, &memory)
                .map(|r| Response::Enclave(Box::new(r))),
            Request::RevokeMemory { enclave, blocks } => self
                .revoke_memory(peer, &enclave, &blocks)
                .map(|r| Response::Enclave(Box::new(r))),
            // Apps (apps.rs).
            Request::ListApps { enclave } => self.list_apps(enclave.as_ref()),
            Request::GetApp { app } => self.get_app(app),
            Request::LaunchApp { launch } => {
                if !launch.stream {
                    return Answer::Reply(
                        self.launch_app(peer, &launch)
                            .map(|(rec, _)| Response::App(Box::new(rec))),
                    );
                }
                // Streamed: the record, the output, then the end, as frames.
                return match self.launch_streaming(stream, peer, &launch) {
                    Ok(()) => Answer::Written,
                    Err(e) => {
                        tracing::debug!(error = %e, "streaming client went away");
                        Answer::HangUp
                    }
                };
            }
            Request::JoinEnclave {
                enclave,
                pid,
                argv,
                slurm,
                owner,
                defer_cgroups,
            } => self
                .join_enclave(peer, &enclave, pid, argv, slurm, owner, defer_cgroups)
                .map(|(app, ns_pid, namespaces)| Response::Joined {
                    app: Box::new(app),
                    ns_pid,
                    namespaces,
                }),
            Request::PlaceTask { enclave, pid } => self
                .place_task(peer, &enclave, pid)
                .map(|r| Response::App(Box::new(r))),
            Request::TaskExited { app, exit } => self
                .task_exited(peer, app, exit)
                .map(|r| Response::App(Box::new(r))),
            Request::KillApp { app, signal } => {
                self.kill_app(peer, app, signal).map(|()| Response::Ok)
            }
            Request::WaitApp { app } => self.wait_app(app).map(|r| Response::App(Box::new(r))),
            // The XEMEM name server (xemem.rs).
            Request::XememMake(make) => self
                .xemem_make(peer, &make, fds)
                .map(|r| Response::Segment(Box::new(r))),
            Request::XememGet { segid, access } => match self.xemem_get(peer, segid, access) {
                Ok((rec, fds)) => {
                    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                    let answer = Response::Segment(Box::new(rec));
                    return match write_frame_with_fds(&*stream, &answer, &borrowed) {
                        Ok(()) => Answer::Written,
                        Err(_) => Answer::HangUp,
                    };
                }
                Err(e) => Err(e),
            },
            Request::XememRemove { segid } => self.xemem_remove(peer, segid).map(|()| Response::Ok),
            Request::XememLookup { name } => self
                .xemem_lookup(&name)
                .map(|r| Response::Segment(Box::new(r))),
            Request::XememList => self
                .xemem_list()
                .map(|segments| Response::Segments { segments }),
            Request::XememSignal { segid } => self.xemem_signal(segid).map(|()| Response::Ok),
            // Remora jobs (remora.rs).
            Request::RemoraLaunch { job } => {
                return match self.remora_launch(stream, peer, &job) {
                    Ok(()) => Answer::Written,
                    Err(_) => Answer::HangUp,
                };
            }
            Request::RemoraSignal { job, signal } => {
                self.remora_signal(peer, job, signal).map(|()| Response::Ok)
            }
            Request::ListJobs => self.list_jobs().map(|jobs| Response::Jobs { jobs }),
        };
        Answer::Reply(reply)
    }

    /// Serve `list_apps`: every app, or those of one enclave.
    fn list_apps(&self, enclave: Option<&EnclaveRef>) -> Result<Response, Refusal> {
        let filter = enclave.map(|r| self.resolve(r)).transpose()?.map(|e| e.id);
        let apps = self
            .nis
            .reader()
            .apps()
            .map_err(internal)?
            .into_iter()
            .filter(|a| filter.is_none_or(|id| a.enclave == id))
            .collect();
        Ok(Response::Apps { apps })
    }

    /// Serve `get_app`: app `app`'s record, or `not_found`.
    fn get_app(&self, app: AppId) -> Result<Response, Refusal> {
        let rec = self.nis.reader().app(app).map_err(internal)?;
        let rec = rec.ok_or_else(|| refuse(ErrorCode::NotFound, format!("no app {app}")))?;
        Ok(Response::App(Box::new(rec)))
    }

    /// Serve `ping`: one round trip over the enclave's control link.
    fn ping(&self, enclave: &EnclaveRef) -> Result<Response, Refusal> {
        let rec = self.resolve(enclave)?;
        let link = self.live_link(rec.id).ok_or_else(|| {
            refuse(
                ErrorCode::Unavailable,
                format!("enclave {} is not connected ({})", rec.name, rec.state),
            )
        })?;
        let start = Instant::now();
        match link.call(
            |seq| hobbes_proto::control::ControlDown::Ping { seq },
            Duration::from_secs(5),
        ) {
            Ok(ControlUp::Pong { .. }) => Ok(Response::Pong {
                enclave: rec.id,
                rtt_us: start.elapsed().as_micros() as u64,
            }),
            Ok(other) => Err(internal(format!("unexpected reply {other:?}"))),
            Err(e) => Err(refuse(ErrorCode::Unavailable, e)),
        }
    }

    fn status(&self) -> Result<NodeStatus, Refusal> {
        let snap = self.nis.reader().snapshot().map_err(internal)?;
        let count = |o: fn(&Ownership) -> bool| {
            snap.cores.iter().filter(|c| o(&c.ownership)).count() as u32
        };
        let bytes = |o: fn(&Ownership) -> bool| {
            snap.memory
                .iter()
                .filter(|b| o(&b.ownership))
                .map(|b| b.size)
                .sum::<u64>()
        };
        Ok(NodeStatus {
            state_dir: self.paths.root.display().to_string(),
            cores_total: snap.cores.len() as u32,
            cores_host: count(|o| *o == Ownership::Host),
            cores_free: count(|o| *o == Ownership::Free),
            cores_allocated: count(|o| matches!(o, Ownership::Allocated(_))),
            mem_total: snap.memory.iter().map(|b| b.size).sum(),
            mem_host: bytes(|o| *o == Ownership::Host),
            mem_free: bytes(|o| *o == Ownership::Free),
            mem_allocated: bytes(|o| matches!(o, Ownership::Allocated(_))),
            apps_running: snap
                .apps
                .iter()
                .filter(|a| a.state == AppState::Running)
                .count() as u32,
            managed_cores: self
                .subset_of
                .as_ref()
                .map(|_| format_cpu_list(&snap.cores.iter().map(|c| c.id).collect::<Vec<_>>())),
            node_cores: self.subset_of.as_ref().map(|n| format_cpu_list(&n.cores)),
            node_mem: self.subset_of.as_ref().map(|n| n.mem),
            enclaves: snap.enclaves,
            header: snap.header,
        })
    }
}
