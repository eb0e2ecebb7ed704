//! Client connections on `leviathan.sock`: decode, authorize, dispatch, answer.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hobbes_proto::control::ControlUp;
use hobbes_proto::fdpass::{read_payload_with_fds_limited, write_frame_with_fds, ReadLimits};
use hobbes_proto::frame::{decode_payload, write_frame, FrameError};
use hobbes_proto::model::{AppState, Ownership};
use hobbes_proto::msg::{ErrorCode, NodeStatus, Request, Response};
use hobbes_proto::PROTOCOL_VERSION;
use std::os::fd::AsFd;

use super::apps::AppEvent;
use super::{internal, refuse, Daemon, Refusal};
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
        let limits = self.read_limits();
        loop {
            // Descriptors ride along only with xemem_make; any others are closed when dropped.
            let (payload, fds) = match read_payload_with_fds_limited(&stream, limits) {
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
            let result = match req {
                Request::XememMake(make) => self
                    .xemem_make(&peer, &make, fds)
                    .map(|r| Response::Segment(Box::new(r))),
                Request::XememGet { segid, access } => match self.xemem_get(&peer, segid, access) {
                    Ok((rec, fds)) => {
                        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                        if write_frame_with_fds(
                            &stream,
                            &Response::Segment(Box::new(rec)),
                            &borrowed,
                        )
                        .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
                Request::RemoraLaunch { job } => {
                    if self.remora_launch(&mut stream, &peer, &job).is_err() {
                        return;
                    }
                    continue;
                }
                Request::LaunchApp { launch } if launch.stream => {
                    if let Err(e) = self.launch_streaming(&mut stream, &peer, &launch) {
                        tracing::debug!(error = %e, "streaming client went away");
                        return;
                    }
                    continue;
                }
                Request::CreateEnclave { spec } => self
                    .create_enclave_for(&stream, &peer, spec)
                    .map(|r| Response::Enclave(Box::new(r))),
                req => self.handle(&peer, req),
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
    ) -> Result<hobbes_proto::model::EnclaveRecord, super::Refusal> {
        let rec = self.create_enclave(peer, spec)?;
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

    fn handle(&self, peer: &PeerCred, req: Request) -> Result<Response, Refusal> {
        let nis = self.nis.reader();
        Ok(match req {
            Request::Hello { .. } => Response::Hello {
                server: format!("leviathan {}", env!("CARGO_PKG_VERSION")),
                protocol: PROTOCOL_VERSION,
            },
            Request::Status => Response::Status(Box::new(self.status()?)),
            Request::ListCores => Response::Cores {
                cores: nis.cores().map_err(internal)?,
            },
            Request::ListMemory => Response::Memory {
                blocks: nis.memory().map_err(internal)?,
            },
            Request::ListEnclaves => Response::Enclaves {
                enclaves: nis.enclaves().map_err(internal)?,
            },
            Request::ListApps { enclave } => {
                let filter = enclave.map(|r| self.resolve(&r)).transpose()?.map(|e| e.id);
                let apps = nis
                    .apps()
                    .map_err(internal)?
                    .into_iter()
                    .filter(|a| filter.is_none_or(|id| a.enclave == id))
                    .collect();
                Response::Apps { apps }
            }
            Request::GetEnclave { enclave } => Response::Enclave(Box::new(self.resolve(&enclave)?)),
            Request::GetApp { app } => {
                Response::App(Box::new(nis.app(app).map_err(internal)?.ok_or_else(
                    || refuse(ErrorCode::NotFound, format!("no app {app}")),
                )?))
            }
            Request::CreateEnclave { spec } => {
                Response::Enclave(Box::new(self.create_enclave(peer, spec)?))
            }
            Request::DestroyEnclave { enclave } => {
                self.destroy_enclave(peer, &enclave)?;
                Response::Ok
            }
            Request::AssignCpus { enclave, cpus } => {
                Response::Enclave(Box::new(self.assign_cpus(peer, &enclave, &cpus)?))
            }
            Request::RevokeCpus { enclave, cores } => {
                Response::Enclave(Box::new(self.revoke_cpus(peer, &enclave, &cores)?))
            }
            Request::AssignMemory { enclave, memory } => {
                Response::Enclave(Box::new(self.assign_memory(peer, &enclave, &memory)?))
            }
            Request::RevokeMemory { enclave, blocks } => {
                Response::Enclave(Box::new(self.revoke_memory(peer, &enclave, &blocks)?))
            }
            Request::LaunchApp { launch } => {
                Response::App(Box::new(self.launch_app(peer, &launch)?.0))
            }
            Request::KillApp { app, signal } => {
                self.kill_app(peer, app, signal)?;
                Response::Ok
            }
            Request::WaitApp { app } => Response::App(Box::new(self.wait_app(app)?)),
            Request::XememMake(_) => {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "xemem_make needs its descriptors",
                ))
            }
            Request::XememGet { .. } => {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "xemem_get is answered with descriptors",
                ))
            }
            Request::XememRemove { segid } => {
                self.xemem_remove(peer, segid)?;
                Response::Ok
            }
            Request::XememLookup { name } => Response::Segment(Box::new(self.xemem_lookup(&name)?)),
            Request::RemoraLaunch { .. } => {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "remora_launch streams its answer",
                ))
            }
            Request::RemoraSignal { job, signal } => {
                self.remora_signal(peer, job, signal)?;
                Response::Ok
            }
            Request::ListJobs => Response::Jobs {
                jobs: self.list_jobs()?,
            },
            Request::XememList => Response::Segments {
                segments: self.xemem_list()?,
            },
            Request::XememSignal { segid } => {
                self.xemem_signal(segid)?;
                Response::Ok
            }
            Request::Ping { enclave } => {
                let rec = self.resolve(&enclave)?;
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
                    Ok(ControlUp::Pong { .. }) => Response::Pong {
                        enclave: rec.id,
                        rtt_us: start.elapsed().as_micros() as u64,
                    },
                    Ok(other) => return Err(internal(format!("unexpected reply {other:?}"))),
                    Err(e) => return Err(refuse(ErrorCode::Unavailable, e)),
                }
            }
        })
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
            enclaves: snap.enclaves,
            header: snap.header,
        })
    }
}
