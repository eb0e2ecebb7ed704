//! Messages of the two channels an enclave control process speaks:
//!
//! * with `leviathan` (one persistent connection the control process opens to
//!   the daemon's socket): [`ControlUp`] from the enclave, [`ControlDown`] to it;
//! * with clients, on the enclave's own socket: [`EnclaveRequest`] and
//!   [`EnclaveResponse`] (ping and file access in the enclave's view).

use serde::{Deserialize, Serialize};

use crate::model::{AppId, EnclaveId, ExitStatus};
use crate::msg::Stream;

/// Correlates a command with its reply.
pub type Seq = u64;

/// What a control process knows about one of its apps; sent when it
/// (re)attaches so a restarted daemon loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    pub app: AppId,
    pub local_pid: u32,
    /// `None` while running.
    pub exit: Option<ExitStatus>,
}

/// A control agent's secret. Never printed: `Debug` shows only whether it is set.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credential(pub String);

impl Credential {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compare in time independent of where the two differ.
    pub fn matches(&self, other: &Credential) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Credential(none)"
        } else {
            "Credential(<redacted>)"
        })
    }
}

/// Control process -> daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub enum ControlUp {
    /// First message on a connection. `apps` lists every app it still tracks
    /// (running, or ended while no daemon listened).
    Attach {
        enclave: EnclaveId,
        apps: Vec<AppReport>,
        /// The secret the daemon gave this enclave's control agent at start:
        /// what admits the link, whatever carries it (a Unix socket, a VM's
        /// serial channel). Empty from agents started before credentials
        /// existed, which are admitted by pid instead.
        #[serde(default, skip_serializing_if = "Credential::is_empty")]
        credential: Credential,
    },
    Heartbeat {
        seq: u64,
    },
    Started {
        seq: Seq,
        app: AppId,
        local_pid: u32,
    },
    LaunchFailed {
        seq: Seq,
        app: AppId,
        error: String,
    },
    Exited {
        app: AppId,
        local_pid: u32,
        status: ExitStatus,
    },
    Output {
        app: AppId,
        stream: Stream,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    Pong {
        seq: Seq,
    },
    /// Reply to a command that has no richer answer.
    Done {
        seq: Seq,
        error: Option<String>,
    },
}

/// Daemon -> control process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub enum ControlDown {
    /// Answer to `Attach`.
    Welcome {
        heartbeat_interval_ms: u64,
    },
    Launch(Box<LaunchCommand>),
    Signal {
        seq: Seq,
        app: AppId,
        signal: i32,
    },
    Ping {
        seq: Seq,
    },
    /// Forget a finished app the daemon has recorded.
    Forget {
        app: AppId,
    },
    /// Kill everything and exit.
    Shutdown,
}

/// Start one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchCommand {
    pub seq: Seq,
    pub app: AppId,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub stdout_log: String,
    pub stderr_log: String,
    /// Forward output to the daemon (a client is streaming it).
    pub forward_output: bool,
    /// The frame carries a descriptor the app inherits, named by `PMI_FD`
    /// (Remora's socketpair PMI mode).
    #[serde(default)]
    pub pmi_fd: bool,
}

/// Client -> control process (on the enclave's socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum EnclaveRequest {
    Ping {
        seq: u64,
    },
    /// Read up to `len` bytes at `offset` of a file as the enclave sees it.
    ReadFile {
        path: String,
        offset: u64,
        len: u32,
    },
    /// Write a file in the enclave's view (`append` continues a chunked write).
    WriteFile {
        path: String,
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
        append: bool,
        mode: u32,
    },
}

/// Control process -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum EnclaveResponse {
    Pong {
        seq: u64,
        enclave: EnclaveId,
    },
    Data {
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
        /// True when the file ends within this chunk.
        eof: bool,
    },
    Written,
    Error {
        message: String,
    },
}

/// Largest chunk a file transfer moves per frame.
pub const FILE_CHUNK: u32 = 1 << 20;
