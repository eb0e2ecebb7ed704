//! Serving PMI connections: one rank on any byte stream ([`serve_rank`]), and the two ways an
//! MPICH process finds its server:
//!
//! - [`SocketpairServer`]: the launcher hands each process one end of a socketpair, named by
//!   `PMI_FD`, with `PMI_RANK` and `PMI_SIZE`.
//! - [`TcpServer`]: processes connect to `PMI_PORT=host:port` and identify with
//!   `cmd=initack pmiid=<PMI_ID>`; the server answers with the job size and the rank.
//!
//! Every connection runs on its own thread. A connection's failure is reported to its job
//! ([`crate::JobEvent`]) and never affects other connections or jobs.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command as ProcessCommand;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::job::{Action, ClaimError, Job};
use crate::wire::{Command, CommandReader, ReadError, Reply, WireError};

/// How long a TCP connection may take to send `cmd=initack` before it is dropped, so a silent
/// stranger cannot hold a thread forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a served connection ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The client finalized and closed.
    Finalized,
    /// The client closed without finalizing (reported as [`crate::JobEvent::Disconnected`]).
    Disconnected,
    /// The client aborted; the connection was kept open, unanswered, until the client died.
    Aborted,
    /// The job was cancelled while the client waited in a barrier.
    Cancelled,
}

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The rank could not be claimed: outside the job, or already served by another
    /// connection. Nothing was sent on the stream.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The client sent bytes that are not a command (see [`WireError`]).
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// The client sent a valid command that makes no sense at that point (`initack` after
    /// set-up, `barrier_in` twice in one barrier, anything but `initack` first on TCP), a TCP
    /// client closed before its handshake, or a serving thread panicked; the message says
    /// which.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading or writing the stream failed, or the TCP handshake did not arrive within
    /// [`HANDSHAKE_TIMEOUT`].
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl From<ReadError> for ServeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Wire(w) => ServeError::Wire(w),
            ReadError::Io(i) => ServeError::Io(i),
        }
    }
}

/// Serve `rank` of `job` on `stream` until the client goes away. Claims the rank first (a
/// second connection for the same rank is refused). Protocol errors are also reported to the
/// job as [`crate::JobEvent::RankError`].
pub fn serve_rank<S: Read + Write>(
    stream: S,
    job: &Job,
    rank: u32,
) -> Result<ServeEnd, ServeError> {
    if let Err(e) = job.claim(rank) {
        job.report_error(None, &e.to_string());
        return Err(e.into());
    }
    serve_claimed(stream, CommandReader::new(), job, rank)
}

fn send<S: Write>(stream: &mut S, reply: &Reply) -> io::Result<()> {
    stream.write_all(reply.to_string().as_bytes())?;
    stream.flush()
}

/// The command loop for a claimed rank; `reader` may already hold bytes read past a handshake.
fn serve_claimed<S: Read + Write>(
    mut stream: S,
    mut reader: CommandReader,
    job: &Job,
    rank: u32,
) -> Result<ServeEnd, ServeError> {
    let result = serve_loop(&mut stream, &mut reader, job, rank);
    match &result {
        Ok(ServeEnd::Disconnected) | Err(ServeError::Io(_)) => job.disconnected(rank),
        Ok(ServeEnd::Aborted) => {
            // The client waits for a reply that never comes; keep its socket open (closing it
            // kills it by SIGPIPE before the launcher can report the exit code) and discard
            // anything more until it is killed.
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
        Err(e) => job.report_error(Some(rank), &e.to_string()),
        Ok(_) => {}
    }
    result
}

fn serve_loop<S: Read + Write>(
    stream: &mut S,
    reader: &mut CommandReader,
    job: &Job,
    rank: u32,
) -> Result<ServeEnd, ServeError> {
    loop {
        let cmd = match reader.next_command(stream) {
            Ok(Some(cmd)) => cmd,
            Ok(None) if job.is_finalized(rank) => return Ok(ServeEnd::Finalized),
            Ok(None) => return Ok(ServeEnd::Disconnected),
            Err(ReadError::Wire(e)) => match e.error_reply() {
                // The command was recognised: PMI has an rc for it, and the client goes on.
                Some(reply) => {
                    send(stream, &reply)?;
                    continue;
                }
                None => return Err(e.into()),
            },
            Err(ReadError::Io(e)) => return Err(e.into()),
        };
        match job.handle(rank, cmd) {
            Action::Reply(reply) => send(stream, &reply)?,
            Action::Nothing => {}
            Action::Aborted => return Ok(ServeEnd::Aborted),
            Action::Cancelled => return Ok(ServeEnd::Cancelled),
            Action::Close(why) => return Err(ServeError::Protocol(why)),
        }
    }
}

/// What a launcher needs from a PMI server to start rank processes.
pub trait PmiTransport {
    /// The environment variables that point rank `rank`'s MPI library at this server (empty
    /// for a rank outside the job).
    fn env_for_rank(&self, rank: u32) -> Vec<(String, String)>;

    /// Prepare a `std::process::Command` for `rank`: the environment, plus whatever must be
    /// inherited.
    fn configure_command(&self, rank: u32, cmd: &mut ProcessCommand) -> io::Result<()> {
        cmd.envs(self.env_for_rank(rank));
        Ok(())
    }

    /// The process for `rank` has been started: release what only the child needed.
    fn spawned(&self, _rank: u32) {}
}

/// Socketpair mode: one socketpair per rank, created up front. The child end of rank `r` must
/// be inherited by `r`'s process only ([`PmiTransport::configure_command`] does that for a
/// `std::process::Command`; another launcher passes [`SocketpairServer::child_fd`] itself).
pub struct SocketpairServer {
    job: Arc<Job>,
    /// The child ends, until the child is spawned. They are close-on-exec, so a rank's process
    /// does not inherit the other ranks' ends (which would hide their EOF from the server).
    child_ends: Mutex<Vec<Option<OwnedFd>>>,
    threads: Vec<JoinHandle<Result<ServeEnd, ServeError>>>,
}

impl SocketpairServer {
    /// Create the socketpairs for every rank of `job` and start serving their server ends.
    pub fn start(job: Arc<Job>) -> io::Result<Self> {
        let mut child_ends = Vec::new();
        let mut threads = Vec::new();
        for rank in 0..job.size() {
            let (server_end, child_end) = UnixStream::pair()?;
            let job2 = job.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("pmi-{rank}"))
                    .spawn(move || serve_rank(server_end, &job2, rank))?,
            );
            child_ends.push(Some(OwnedFd::from(child_end)));
        }
        Ok(Self {
            job,
            child_ends: Mutex::new(child_ends),
            threads,
        })
    }

    /// The job whose ranks this server serves.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// The child end of `rank`'s socketpair (close-on-exec), while it has not been released.
    pub fn child_fd(&self, rank: u32) -> Option<RawFd> {
        let ends = self.child_ends.lock().unwrap_or_else(|p| p.into_inner());
        ends.get(rank as usize)?.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Wait for every rank's connection to end and return how each did.
    pub fn join(mut self) -> Vec<Result<ServeEnd, ServeError>> {
        self.release_all();
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(ServeError::Protocol("serving thread panicked".into())))
            })
            .collect()
    }

    fn release_all(&self) {
        let mut ends = self.child_ends.lock().unwrap_or_else(|p| p.into_inner());
        ends.iter_mut().for_each(|e| drop(e.take()));
    }
}

impl PmiTransport for SocketpairServer {
    fn env_for_rank(&self, rank: u32) -> Vec<(String, String)> {
        let Some(fd) = self.child_fd(rank) else {
            return Vec::new();
        };
        vec![
            ("PMI_FD".into(), fd.to_string()),
            ("PMI_RANK".into(), rank.to_string()),
            ("PMI_SIZE".into(), self.job.size().to_string()),
        ]
    }

    fn configure_command(&self, rank: u32, cmd: &mut ProcessCommand) -> io::Result<()> {
        let fd = self.child_fd(rank).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socketpair for rank {rank} (outside the job or already spawned)"),
            )
        })?;
        cmd.envs(self.env_for_rank(rank));
        // SAFETY: the closure only calls fcntl, which is async-signal-safe, on an fd that is
        // open in the parent (held until `spawned`) and therefore in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Close the parent's copy of the child end, so the server sees EOF when the child exits.
    fn spawned(&self, rank: u32) {
        let mut ends = self.child_ends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(end) = ends.get_mut(rank as usize) {
            drop(end.take());
        }
    }
}

impl Drop for SocketpairServer {
    /// Dropping the server ends the job: barriers are released and the child ends closed.
    /// Serving threads end when their clients' ends close.
    fn drop(&mut self) {
        self.job.cancel();
        self.release_all();
    }
}

/// TCP mode: a listener for one job. `PMI_ID` is the rank; a connection whose `pmiid` is not a
/// rank of the job, or is already connected, is refused (closed) and reported as
/// [`crate::JobEvent::StrayConnection`].
pub struct TcpServer {
    job: Arc<Job>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listen on an ephemeral port of 127.0.0.1.
    pub fn start(job: Arc<Job>) -> io::Result<Self> {
        Self::bind(job, "127.0.0.1:0")
    }

    /// Listen on `addr` (port 0 picks an ephemeral one; [`TcpServer::addr`] says which) and
    /// accept connections on a thread of its own until the server is dropped.
    ///
    /// # Errors
    ///
    /// The error of binding the listener or of starting the accept thread.
    pub fn bind(job: Arc<Job>, addr: impl ToSocketAddrs) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (job, stop) = (job.clone(), stop.clone());
            thread::Builder::new()
                .name("pmi-accept".into())
                .spawn(move || accept_loop(listener, job, stop))?
        };
        Ok(Self {
            job,
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The address actually listened on, given to ranks as `PMI_PORT=host:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The job whose ranks this server serves.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }
}

impl PmiTransport for TcpServer {
    fn env_for_rank(&self, rank: u32) -> Vec<(String, String)> {
        if rank >= self.job.size() {
            return Vec::new();
        }
        vec![
            ("PMI_PORT".into(), self.addr.to_string()),
            ("PMI_ID".into(), rank.to_string()),
        ]
    }
}

impl Drop for TcpServer {
    /// Stops accepting and ends the job (barriers are released). Established connections end
    /// when their clients close.
    fn drop(&mut self) {
        self.job.cancel();
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept(); if the connect fails the listener is already gone.
        if TcpStream::connect(self.addr).is_ok() {
            if let Some(t) = self.accept.take() {
                let _ = t.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, job: Arc<Job>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            // Transient (e.g. the peer reset before accept, or out of fds): keep listening.
            continue;
        };
        let job = job.clone();
        // If no thread can be started, the stream is dropped with the closure: the client
        // sees its connection closed, and the listener goes on.
        let _ = thread::Builder::new()
            .name("pmi-tcp".into())
            .spawn(move || serve_tcp(stream, &job));
    }
}

/// One TCP connection: the `initack` handshake, then the rank's command loop.
fn serve_tcp(mut stream: TcpStream, job: &Job) -> Result<ServeEnd, ServeError> {
    let mut reader = CommandReader::new();
    let rank = match handshake(&mut stream, &mut reader, job) {
        Ok(rank) => rank,
        Err(e) => {
            job.report_error(None, &e.to_string());
            let _ = stream.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    serve_claimed(stream, reader, job, rank)
}

fn handshake(
    stream: &mut TcpStream,
    reader: &mut CommandReader,
    job: &Job,
) -> Result<u32, ServeError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // Request/response lines: don't let Nagle hold a reply back.
    stream.set_nodelay(true)?;
    let rank = match reader.next_command(stream)? {
        Some(Command::InitAck { pmiid }) => pmiid,
        Some(other) => {
            return Err(ServeError::Protocol(format!(
                "expected cmd=initack as the first line, got {other:?}"
            )))
        }
        None => {
            return Err(ServeError::Protocol(
                "connection closed before cmd=initack".into(),
            ))
        }
    };
    job.claim(rank)?;
    stream.set_read_timeout(None)?;
    send(
        stream,
        &Reply::InitAck {
            size: job.size(),
            rank,
        },
    )?;
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobConfig, JobEvent};
    use std::io::BufRead;
    use std::io::BufReader;

    const T: Duration = Duration::from_secs(10);

    fn job(size: u32) -> Arc<Job> {
        Arc::new(Job::new(JobConfig::new("kvs_s_0", size)).unwrap())
    }

    /// A scripted client: send a line, read the reply line.
    struct Client<S: Read + Write> {
        r: BufReader<S>,
    }
    impl<S: Read + Write> Client<S> {
        fn ask(&mut self, line: &str) -> String {
            self.r.get_mut().write_all(line.as_bytes()).unwrap();
            self.line()
        }
        fn line(&mut self) -> String {
            let mut s = String::new();
            self.r.read_line(&mut s).unwrap();
            s
        }
    }

    #[test]
    fn serve_rank_over_a_socketpair_stream() {
        let j = job(1);
        let (server, client) = UnixStream::pair().unwrap();
        let j2 = j.clone();
        let t = thread::spawn(move || serve_rank(server, &j2, 0));
        let mut c = Client {
            r: BufReader::new(client),
        };
        assert_eq!(
            c.ask("cmd=init pmi_version=1 pmi_subversion=1\n"),
            "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        );
        assert_eq!(
            c.ask("cmd=get_maxes\n"),
            "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"
        );
        assert_eq!(c.ask("cmd=get_appnum\n"), "cmd=appnum appnum=0\n");
        assert_eq!(
            c.ask("cmd=get_my_kvsname\n"),
            "cmd=my_kvsname kvsname=kvs_s_0\n"
        );
        assert_eq!(
            c.ask("cmd=get kvsname=kvs_s_0 key=PMI_process_mapping\n"),
            "cmd=get_result rc=0 msg=success value=(vector,(0,1,1))\n"
        );
        assert_eq!(c.ask("cmd=barrier_in\n"), "cmd=barrier_out\n");
        assert_eq!(
            c.ask("cmd=put kvsname=kvs_s_0 key=a value=0A\n"),
            "cmd=put_result rc=0 msg=success\n"
        );
        assert_eq!(
            c.ask("cmd=get kvsname=kvs_s_0 key=a\n"),
            "cmd=get_result rc=0 msg=success value=0A\n"
        );
        assert_eq!(
            c.ask("cmd=get kvsname=kvs_s_0 key=b\n"),
            "cmd=get_result rc=-1 msg=key_b_not_found value=unknown\n"
        );
        // A recognised command with a missing field gets its rc and the connection goes on.
        assert_eq!(
            c.ask("cmd=get\n"),
            "cmd=get_result rc=-1 msg=missing_key value=unknown\n"
        );
        assert_eq!(
            c.ask("mcmd=spawn\nnprocs=1\nexecname=x\nendcmd\n"),
            "cmd=spawn_result rc=-1 msg=spawn_not_supported\n"
        );
        assert_eq!(c.ask("cmd=finalize\n"), "cmd=finalize_ack\n");
        drop(c);
        assert_eq!(t.join().unwrap().unwrap(), ServeEnd::Finalized);
        assert_eq!(j.next_event(T), Some(JobEvent::Finalized { rank: 0 }));
        assert_eq!(j.next_event(T), Some(JobEvent::AllFinalized));
    }

    #[test]
    fn garbage_closes_the_connection_and_is_reported() {
        let j = job(2);
        let (server, mut client) = UnixStream::pair().unwrap();
        let j2 = j.clone();
        let t = thread::spawn(move || serve_rank(server, &j2, 1));
        client.write_all(b"\xff\xfe garbage\n").unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap(); // EOF: the server closed
        assert!(rest.is_empty());
        assert!(matches!(
            t.join().unwrap(),
            Err(ServeError::Wire(WireError::NotUtf8 { .. }))
        ));
        assert!(matches!(
            j.next_event(T),
            Some(JobEvent::RankError { rank: 1, .. })
        ));
        // The other rank is unaffected.
        assert_eq!(j.claim(0), Ok(()));
    }

    #[test]
    fn abort_is_never_answered() {
        let j = job(1);
        let (server, mut client) = UnixStream::pair().unwrap();
        let j2 = j.clone();
        let t = thread::spawn(move || serve_rank(server, &j2, 0));
        client.write_all(b"cmd=abort exitcode=7\n").unwrap();
        assert_eq!(
            j.next_event(T),
            Some(JobEvent::Abort {
                rank: 0,
                exitcode: 7
            })
        );
        // Still open and silent: a read would block, so check with a short timeout.
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 1];
        let e = client.read(&mut b).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        drop(client); // the launcher kills the process
        assert_eq!(t.join().unwrap().unwrap(), ServeEnd::Aborted);
    }

    #[test]
    fn tcp_handshake_and_refusals() {
        let j = job(2);
        let server = TcpServer::start(j.clone()).unwrap();
        let env = server.env_for_rank(1);
        assert_eq!(env[0], ("PMI_PORT".into(), server.addr().to_string()));
        assert_eq!(env[1], ("PMI_ID".into(), "1".into()));
        assert!(server.env_for_rank(2).is_empty());

        let mut c = Client {
            r: BufReader::new(TcpStream::connect(server.addr()).unwrap()),
        };
        assert_eq!(c.ask("cmd=initack pmiid=1\n"), "cmd=initack\n");
        assert_eq!(c.line(), "cmd=set size=2\n");
        assert_eq!(c.line(), "cmd=set rank=1\n");
        assert_eq!(c.line(), "cmd=set debug=0\n");
        assert_eq!(c.ask("cmd=get_appnum\n"), "cmd=appnum appnum=0\n");

        for first in [
            "cmd=initack pmiid=1\n",
            "cmd=initack pmiid=9\n",
            "cmd=get_maxes\n",
            "\0\0\0\n",
        ] {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(first.as_bytes()).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{first:?} got {rest:?}");
            assert!(
                matches!(j.next_event(T), Some(JobEvent::StrayConnection { .. })),
                "{first:?}"
            );
        }
        // The real rank still works.
        assert_eq!(c.ask("cmd=finalize\n"), "cmd=finalize_ack\n");
        assert_eq!(j.next_event(T), Some(JobEvent::Finalized { rank: 1 }));
    }

    #[test]
    fn socketpair_env_and_release() {
        let j = job(2);
        let server = SocketpairServer::start(j.clone()).unwrap();
        let env = server.env_for_rank(0);
        let fd = server.child_fd(0).unwrap();
        assert_eq!(
            env,
            vec![
                ("PMI_FD".to_owned(), fd.to_string()),
                ("PMI_RANK".to_owned(), "0".to_owned()),
                ("PMI_SIZE".to_owned(), "2".to_owned())
            ]
        );
        assert!(server.env_for_rank(5).is_empty());
        server.spawned(0);
        assert!(server.child_fd(0).is_none());
        let mut cmd = ProcessCommand::new("true");
        assert!(server.configure_command(0, &mut cmd).is_err());
        // Closing the child ends ends every connection; the job is not cancelled yet, so the
        // unfinalized ranks are reported.
        let ends = server.join();
        assert!(
            ends.iter().all(|e| matches!(e, Ok(ServeEnd::Disconnected))),
            "{ends:?}"
        );
        // In whichever order the two threads saw their EOF.
        let mut gone = [j.next_event(T), j.next_event(T)];
        gone.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            gone,
            [
                Some(JobEvent::Disconnected { rank: 0 }),
                Some(JobEvent::Disconnected { rank: 1 })
            ]
        );
    }
}
