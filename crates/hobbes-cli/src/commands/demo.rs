//! `hobbes demo`: the tour. Uses the running daemon, or starts an embedded
//! one in a temporary state directory; creates an enclave, runs a program in
//! it with its output streamed back, shows the node, then undoes it all,
//! on error paths too (the guards below clean up on drop).

use anyhow::{bail, Result};
use hobbes_client::{Client, EnclaveConn};
use hobbes_proto::model::{EnclaveId, EnclaveKind, EnclaveRecord};
use hobbes_proto::msg::{EnclaveRef, ErrorCode, LaunchSpec};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};

use super::{app, node};
use crate::Ctx;
use hobbes_embedded::{self as embedded, Embedded};

const STEPS: u32 = 5;

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
    let (client, daemon, socket) = embedded::connect_or_start(&ctx.socket, |what| step(1, what))?;
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
        for line in hobbes_client::human::describe_enclave(&rec) {
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
            vm: None,
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
        hobbes_embedded::destroy_enclaves(&self.ctx.socket, self.enclave.take());
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
