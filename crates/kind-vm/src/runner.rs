//! Apps as programs in the guest: `hobbes-agent`'s [`AppRunner`] for a VM,
//! on the guest link.

use std::fs::File;
use std::sync::{Arc, OnceLock};

use hobbes_agent::{AgentHandle, AppIo, AppRunner, ConsoleRelay, ExitReporter};
use hobbes_proto::control::{EnclaveResponse, LaunchCommand};
use hobbes_proto::model::AppId;
use vm_guest_proto::{FromGuest, GuestLaunch, ToGuest};

use crate::console::Console;
use crate::guest::GuestLink;

/// What the runner does to end the VM (kill QEMU), given by the monitor.
pub type Stopper = Box<dyn Fn() + Send + Sync>;

/// The VM's apps.
pub struct VmRunner {
    link: Arc<GuestLink>,
    console: Arc<Console>,
    stop: Stopper,
    /// The agent, once it exists (the runner is made first).
    pub agent: OnceLock<AgentHandle>,
}

impl VmRunner {
    /// A runner on `link`, with the guest's `console`; `stop` ends the VM.
    pub fn new(link: Arc<GuestLink>, console: Arc<Console>, stop: Stopper) -> VmRunner {
        VmRunner {
            link,
            console,
            stop,
            agent: OnceLock::new(),
        }
    }
}

/// The guest's environment for `cmd`: its own, with a `PATH` that reaches
/// both the host's programs (the host's `/usr`) and the guest's busybox.
fn guest_env(cmd: &LaunchCommand) -> Vec<(String, String)> {
    let mut env = cmd.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    env
}

impl AppRunner for VmRunner {
    fn launch(&self, cmd: &LaunchCommand, io: AppIo, exit: ExitReporter) -> Result<u32, String> {
        if cmd.pmi_fd {
            return Err(
                "a VM enclave cannot pass a host descriptor to a guest program (Remora's PMI_FD); run MPI jobs in native enclaves"
                    .into(),
            );
        }
        let AppIo { stdout, stderr, .. } = io;
        self.link.launch(
            GuestLaunch {
                app: cmd.app,
                argv: cmd.argv.clone(),
                env: guest_env(cmd),
                cwd: cmd.cwd.clone(),
                uid: cmd.uid,
                gid: cmd.gid,
            },
            File::from(stdout),
            File::from(stderr),
            exit,
        )
    }

    fn signal(&self, app: AppId, _local_pid: u32, signal: i32) -> Result<(), String> {
        match self
            .link
            .request(|seq| ToGuest::Signal { seq, app, signal })?
        {
            FromGuest::Done { error: None, .. } => Ok(()),
            FromGuest::Done { error: Some(e), .. } => Err(e),
            other => Err(format!("the guest agent answered a signal with {other:?}")),
        }
    }

    fn kill_all(&self) {
        (self.stop)();
    }

    fn ping(&self) -> Result<(), String> {
        match self.link.request(|seq| ToGuest::Ping { seq })? {
            FromGuest::Pong { .. } => Ok(()),
            other => Err(format!("the guest agent answered a ping with {other:?}")),
        }
    }

    fn read_file(
        &self,
        uid: u32,
        gid: u32,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<EnclaveResponse, String> {
        let path = path.to_string();
        match self.link.request(|seq| ToGuest::ReadFile {
            seq,
            path,
            offset,
            len,
            uid,
            gid,
        })? {
            FromGuest::FileData { data, eof, .. } => Ok(EnclaveResponse::Data { data, eof }),
            FromGuest::Failed { error, .. } => Err(error),
            other => Err(format!("the guest agent answered a read with {other:?}")),
        }
    }

    fn write_file(
        &self,
        uid: u32,
        gid: u32,
        path: &str,
        data: &[u8],
        append: bool,
        mode: u32,
    ) -> Result<EnclaveResponse, String> {
        let (path, data) = (path.to_string(), data.to_vec());
        match self.link.request(|seq| ToGuest::WriteFile {
            seq,
            path,
            data,
            append,
            mode,
            uid,
            gid,
        })? {
            FromGuest::Done { error: None, .. } => Ok(EnclaveResponse::Written),
            FromGuest::Done { error: Some(e), .. } | FromGuest::Failed { error: e, .. } => Err(e),
            other => Err(format!("the guest agent answered a write with {other:?}")),
        }
    }

    fn console(&self) -> Result<ConsoleRelay, String> {
        self.console.attach()
    }
}
