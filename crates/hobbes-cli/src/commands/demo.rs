//! `hobbes demo`: the tour. Uses the running daemon, or starts an embedded
//! one in a temporary state directory; creates an enclave, runs a program in
//! it with its output streamed back, shows the node, then undoes it all,
//! on error paths too (the guards below clean up on drop).

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hobbes_client::{Client, EnclaveConn};
use hobbes_proto::model::{EnclaveId, EnclaveKind, EnclaveRecord};
use hobbes_proto::msg::{EnclaveRef, ErrorCode, LaunchSpec};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use tempfile::TempDir;

use super::{app, enclave, node};
use crate::Ctx;

const STEPS: u32 = 5;
/// How long an embedded daemon may take to answer, and to exit on SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll period of those condition waits.
const POLL: Duration = Duration::from_millis(20);

/// What runs in the enclave: it shows the enclave's view of ids, cores and memory.
const SCRIPT: &str = r#"echo "hello from enclave $HOBBES_ENCLAVE_ID (app $HOBBES_APP_ID): I am pid $$ on host $(cat /proc/sys/kernel/hostname)"
grep Cpus_allowed_list /proc/self/status
v1=$(sed -n 's/^[0-9]*:memory:\(.*\)/\1/p' /proc/self/cgroup)
v2=$(sed -n 's/^0::\(.*\)/\1/p' /proc/self/cgroup)
limit=$(cat "/sys/fs/cgroup/memory$v1/memory.limit_in_bytes" 2>/dev/null || cat "/sys/fs/cgroup$v2/memory.max" 2>/dev/null)
case "$limit" in ''|max) echo "memory limit: none" ;; *) echo "memory limit: $((limit / 1048576)) MiB" ;; esac"#;

fn step(n: u32, what: impl std::fmt::Display) {
    println!("[{n}/{STEPS}] {what}");
}

pub fn run(ctx: &Ctx) -> Result<i32> {
    // (1) A daemon: the one that answers, or our own.
    let (client, daemon) = match Client::connect(&ctx.socket).and_then(|mut c| {
        let st = c.status()?;
        Ok((c, st))
    }) {
        Ok((client, st)) => {
            step(
                1,
                format_args!(
                    "using the running leviathan at {} (pid {})",
                    ctx.socket.display(),
                    st.header.daemon_pid
                ),
            );
            (client, None)
        }
        Err(_) => {
            let mut daemon = Embedded::start()?;
            let client = daemon.wait_ready()?;
            (client, Some(daemon))
        }
    };
    let socket = daemon
        .as_ref()
        .map_or_else(|| ctx.socket.clone(), Embedded::socket);
    let mut demo = Demo {
        ctx: Ctx {
            socket,
            json: false,
        },
        client,
        enclave: None,
        daemon,
    };
    let code = demo.tour()?;
    demo.finish();
    if code != 0 {
        bail!("the demo program exited with status {code}");
    }
    println!("done. Next: `hobbes --help`, or start `leviathan` and try `hobbes create-enclave`.");
    Ok(0)
}

/// The demo's resources; dropping it destroys the enclave, then stops the
/// embedded daemon (if any) and removes its state directory.
struct Demo {
    ctx: Ctx,
    client: Client,
    enclave: Option<EnclaveId>,
    daemon: Option<Embedded>,
}

impl Demo {
    /// Steps 2 to 4; returns the program's exit code.
    fn tour(&mut self) -> Result<i32> {
        let st = self.client.status()?;
        if !st.header.privileged {
            println!("      note: leviathan is not root, so the enclave will NOT be isolated");
            println!("      (CPU affinity + process group only; run as root for the real thing)");
        }

        // (2) An enclave, exclusive if a core is free.
        let taken = self
            .client
            .list_enclaves()?
            .iter()
            .any(|e| e.name == "demo");
        let name = if taken {
            format!("demo-{}", std::process::id())
        } else {
            "demo".to_string()
        };
        step(
            2,
            format_args!("creating enclave {name:?}: 1 core, 256 MiB, exclusive"),
        );
        let rec = match self.create(&name, false) {
            Err(e)
                if e.code() == Some(ErrorCode::Overcommit)
                    && self.client.status()?.cores_free == 0 =>
            {
                println!("      no free core ({e});");
                println!(
                    "      falling back to a SHARED enclave: pinned to a host core, NOT isolated"
                );
                self.create(&name, true)?
            }
            other => other?,
        };
        for line in enclave::describe(&rec) {
            println!("      {line}");
        }

        // (3) A program in it, output streamed back as it comes.
        step(
            3,
            format_args!("launching a shell script in enclave {name:?}; its output:"),
        );
        let spec = LaunchSpec {
            enclave: EnclaveRef::Id(rec.id),
            name: Some("hello".into()),
            argv: vec!["sh".into(), "-c".into(), SCRIPT.into()],
            env: Vec::new(),
            cwd: None,
            stream: true,
        };
        let app = app::run_streaming(&mut self.client, spec)?;
        let code = app::exit_code(&app)?;
        let pids = app
            .procs
            .first()
            .map(|p| {
                format!(
                    ": pid {} in the enclave is pid {} on the host",
                    p.local, p.global
                )
            })
            .unwrap_or_default();
        println!(
            "      app {} ({}) ended with {}{pids}",
            app.id,
            app.name,
            app.exit.map_or("no status".into(), |e| e.to_string())
        );

        // (4) The node as the daemon sees it, and the enclave answering directly.
        step(
            4,
            "the node now (`hobbes status`, `hobbes list-apps`, `hobbes ping`)",
        );
        node::status(&self.ctx, &mut self.client)?;
        println!();
        app::list(&self.ctx, &mut self.client, None)?;
        println!();
        let (_, rtt) = EnclaveConn::to_enclave(&rec)?.ping()?;
        println!(
            "enclave {name:?} control process answered a direct ping in {:.3} ms",
            rtt.as_secs_f64() * 1e3
        );
        Ok(code)
    }

    fn create(&mut self, name: &str, shared: bool) -> hobbes_client::Result<EnclaveRecord> {
        let rec = self.client.create_enclave(EnclaveSpec {
            name: name.to_string(),
            kind: EnclaveKind::Native,
            shared,
            host_ipc: false,
            cpus: CpuRequest {
                count: 1,
                ..Default::default()
            },
            memory: MemRequest {
                size_mib: 256,
                ..Default::default()
            },
        })?;
        self.enclave = Some(rec.id);
        Ok(rec)
    }

    /// (5) Undo everything; also what `drop` does after an error.
    fn finish(&mut self) {
        if self.enclave.is_none() && self.daemon.is_none() {
            return;
        }
        step(5, "cleaning up");
        if let Some(id) = self.enclave.take() {
            // A fresh connection: after an error the old one may be mid-stream.
            match Client::connect(&self.ctx.socket)
                .and_then(|mut c| c.destroy_enclave(EnclaveRef::Id(id)))
            {
                Ok(()) => println!("      destroyed enclave {id}"),
                Err(e) => eprintln!("      could not destroy enclave {id}: {e}"),
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A `leviathan` we started, with its state in a temporary directory.
/// Dropping it stops the daemon and removes the directory.
struct Embedded {
    /// `None` once stopped.
    child: Option<Child>,
    bin: PathBuf,
    dir: TempDir,
}

impl Embedded {
    fn start() -> Result<Self> {
        let bin = find_leviathan()?;
        let dir = tempfile::Builder::new()
            .prefix("hobbes-demo-")
            .tempdir()
            .context("cannot create a state directory for leviathan")?;
        step(
            1,
            format_args!(
                "starting leviathan (embedded, state dir {})",
                dir.path().display()
            ),
        );
        let log_path = dir.path().join("leviathan.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--state-dir").arg(dir.path());
        // Keep core 0 for the host so an exclusive enclave can have another.
        if online_cpus() >= 2 {
            cmd.args(["--host-cores", "0"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe, as required between fork and exec.
        // If hobbes dies without cleaning up (SIGKILL), the daemon gets SIGTERM.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        println!(
            "      {} --state-dir {} (pid {}), log in {}",
            bin.display(),
            dir.path().display(),
            child.id(),
            log_path.display()
        );
        Ok(Embedded {
            child: Some(child),
            bin,
            dir,
        })
    }

    fn socket(&self) -> PathBuf {
        hobbes_client::paths::socket_in(self.dir.path())
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("leviathan.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Wait until the daemon answers a status request (not merely until its
    /// socket exists: it binds before it is ready to serve).
    fn wait_ready(&mut self) -> Result<Client> {
        let socket = self.socket();
        println!("      waiting for it to answer on {}", socket.display());
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "leviathan exited during startup ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut client) = Client::connect(&socket) {
                if client.status().is_ok() {
                    println!("      ready after {} ms", started.elapsed().as_millis());
                    return Ok(client);
                }
            }
            if started.elapsed() >= READY_TIMEOUT {
                bail!(
                    "leviathan did not answer on {} within {} s; its log:\n{}",
                    socket.display(),
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then a bounded wait; SIGKILL and `leviathan cleanup` if it hangs.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        println!("      stopping leviathan (pid {})", child.id());
        // The child is not reaped yet, so its pid cannot have been reused.
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => println!("      leviathan exited ({status})"),
            None => {
                eprintln!(
                    "      leviathan did not exit within {} s: killing it and cleaning up",
                    STOP_TIMEOUT.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                // Enclaves of a killed daemon outlive it; this reclaims them.
                let _ = Command::new(&self.bin)
                    .arg("--state-dir")
                    .arg(self.dir.path())
                    .arg("cleanup")
                    .stdin(Stdio::null())
                    .status();
            }
        }
        println!("      removing {}", self.dir.path().display());
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
        // `dir` is removed when the field drops, after this.
    }
}

/// Poll for the child's exit until `timeout`; `None` if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// `leviathan` next to this executable (cargo puts both in target/<profile>/), else in PATH.
fn find_leviathan() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("leviathan"));
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("leviathan"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(in_path)
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow!(
                "no leviathan daemon answers and the leviathan binary is neither next to hobbes \
                 nor in PATH: build it (`cargo build --release -p leviathan`) or start it yourself"
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn online_cpus() -> libc::c_long {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}
