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
    /// The app, as the daemon numbered it at launch.
    pub app: AppId,
    /// Its pid in the enclave's PID namespace.
    pub local_pid: u32,
    /// `None` while running.
    pub exit: Option<ExitStatus>,
    /// With `exit`: what the agent knows about the end beyond it, as
    /// [`ControlUp::Exited`] would have said (absent when it has nothing to
    /// say, and from agents older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A control agent's secret. Never printed: `Debug` shows only whether it is set.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credential(
    /// The secret: 64 hex digits, or empty when none was given.
    pub String,
);

impl Credential {
    /// True for no credential (an agent from before credentials existed).
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
        /// The enclave this control process serves.
        enclave: EnclaveId,
        /// Every app it tracks, with its exit if it ended meanwhile.
        apps: Vec<AppReport>,
        /// The secret the daemon gave this enclave's control agent at start:
        /// what admits the link, whatever carries it (a Unix socket, a VM's
        /// serial channel). Empty from agents started before credentials
        /// existed, which are admitted by pid instead.
        #[serde(default, skip_serializing_if = "Credential::is_empty")]
        credential: Credential,
    },
    /// Sent every `heartbeat_interval_ms`; silence for `heartbeat_timeout_ms`
    /// marks the enclave crashed.
    Heartbeat {
        /// Counts heartbeats on this link, from the control process's side.
        seq: u64,
    },
    /// A [`ControlDown::Launch`] succeeded: the app's process runs.
    Started {
        /// The launch's `seq`.
        seq: Seq,
        /// The app launched.
        app: AppId,
        /// Its pid in the enclave; the daemon maps it to the host pid.
        local_pid: u32,
    },
    /// A [`ControlDown::Launch`] failed; the app never ran.
    LaunchFailed {
        /// The launch's `seq`.
        seq: Seq,
        /// The app that could not start.
        app: AppId,
        /// Why, for people (becomes the app's `detail`).
        error: String,
    },
    /// An app's process ended; sent after its `started` and its forwarded output.
    Exited {
        /// The app that ended.
        app: AppId,
        /// Its pid in the enclave.
        local_pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// What the agent knows about the end beyond the status, for people
        /// (becomes the app's `detail`): an LWK's guest fault and its summary
        /// of system calls. Absent from agents that have nothing to add, and
        /// from agents older than the field (a daemon older than it ignores it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A chunk of an app's output, for apps launched with `forward_output`.
    Output {
        /// The app that wrote it.
        app: AppId,
        /// Which of its streams.
        stream: Stream,
        /// The raw bytes (base64 in JSON).
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
    },
    /// Answer to [`ControlDown::Ping`].
    Pong {
        /// The ping's `seq`.
        seq: Seq,
    },
    /// Reply to a command that has no richer answer.
    Done {
        /// The command's `seq`.
        seq: Seq,
        /// Why it failed; `None` on success.
        error: Option<String>,
    },
    /// The enclave is lost for a reason the agent knows (a VM's guest kernel
    /// panicked, its QEMU died): the daemon marks it crashed with `reason`.
    /// The agent exits right after sending it. A daemon older than this
    /// message sees the link drop instead, and says less.
    Fatal {
        /// What happened, for people.
        reason: String,
    },
}

/// Daemon -> control process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub enum ControlDown {
    /// Answer to `Attach`.
    Welcome {
        /// How often to send [`ControlUp::Heartbeat`], in ms.
        heartbeat_interval_ms: u64,
    },
    /// Start an app; answered by `started` or `launch_failed`.
    Launch(Box<LaunchCommand>),
    /// Send a signal to a running app's process; answered by `done`.
    Signal {
        /// Echoed in the `done` reply.
        seq: Seq,
        /// The app to signal.
        app: AppId,
        /// Signal number, 1-64.
        signal: i32,
    },
    /// Liveness round trip; answered by [`ControlUp::Pong`].
    Ping {
        /// Echoed in the `pong`.
        seq: Seq,
    },
    /// Forget a finished app the daemon has recorded.
    Forget {
        /// The app whose exit was recorded.
        app: AppId,
    },
    /// Kill everything and exit.
    Shutdown,
}

/// Start one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchCommand {
    /// Echoed in the `started` or `launch_failed` reply.
    pub seq: Seq,
    /// The id the daemon gave the app (`HOBBES_APP_ID`).
    pub app: AppId,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The app's whole environment: `PATH`, the `HOBBES_*` variables, then
    /// the client's extras (which override them).
    pub env: Vec<(String, String)>,
    /// Working directory in the enclave's view; `None`: the control process's own.
    pub cwd: Option<String>,
    /// Uid to run as (the launching peer's).
    pub uid: u32,
    /// Gid to run as (the launching peer's).
    pub gid: u32,
    /// Path of the file that receives the app's stdout.
    pub stdout_log: String,
    /// Path of the file that receives the app's stderr.
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
    /// One round trip to the control process; open to anyone.
    Ping {
        /// Echoed in the `pong`.
        seq: u64,
    },
    /// Read up to `len` bytes at `offset` of a file as the enclave sees it.
    ReadFile {
        /// Path in the enclave's mount namespace.
        path: String,
        /// Byte offset to read from.
        offset: u64,
        /// Most bytes to return, at most [`FILE_CHUNK`] (1 MiB).
        len: u32,
    },
    /// Write a file in the enclave's view (`append` continues a chunked write).
    WriteFile {
        /// Path in the enclave's mount namespace.
        path: String,
        /// The bytes to write (base64 in JSON), at most [`FILE_CHUNK`] per frame.
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
        /// Append to the file instead of truncating it first.
        append: bool,
        /// Permission bits (masked to `0o7777`) for a file this write creates.
        mode: u32,
    },
    /// Attach to the enclave's console (a VM's serial console): answered by
    /// [`EnclaveResponse::ConsoleAttached`], after which the connection is a
    /// raw byte stream; an error when the kind has no console or another
    /// client holds it. Root or the enclave's owner.
    Console,
}

/// Control process -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reply")]
pub enum EnclaveResponse {
    /// Answer to [`EnclaveRequest::Ping`].
    Pong {
        /// The ping's `seq`.
        seq: u64,
        /// The enclave this control process serves.
        enclave: EnclaveId,
    },
    /// Answer to [`EnclaveRequest::ReadFile`].
    Data {
        /// The bytes read (base64 in JSON); fewer than asked at the end of the file.
        #[serde(with = "crate::b64")]
        data: Vec<u8>,
        /// True when the file ends within this chunk.
        eof: bool,
    },
    /// Answer to [`EnclaveRequest::WriteFile`]: every byte was written.
    Written,
    /// The request failed.
    Error {
        /// What failed, naming the path.
        message: String,
    },
    /// Answer to [`EnclaveRequest::Console`]: from the next byte on, the
    /// connection carries the console's raw bytes both ways, until either
    /// side closes it.
    ConsoleAttached,
}

/// Largest chunk a file transfer moves per frame.
pub const FILE_CHUNK: u32 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_detail_is_optional_on_the_wire() {
        // An agent from before `detail` existed.
        let old: ControlUp = serde_json::from_str(
            r#"{"msg":"exited","app":7,"local_pid":3,"status":{"how":"code","value":0}}"#,
        )
        .unwrap();
        assert_eq!(
            old,
            ControlUp::Exited {
                app: 7,
                local_pid: 3,
                status: ExitStatus::Code(0),
                detail: None,
            }
        );
        // Without a detail nothing new goes on the wire, so an older daemon reads it.
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("detail").is_none(), "{json}");
        let with = ControlUp::Exited {
            app: 7,
            local_pid: 3,
            status: ExitStatus::Signal(11),
            detail: Some("page fault (vector 14) at rip 0x401136 accessing 0x0".into()),
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""detail":"page fault"#), "{json}");
        assert_eq!(serde_json::from_str::<ControlUp>(&json).unwrap(), with);
    }
}
