#![deny(missing_docs)]

//! The wire between a VM enclave's monitor (`leviathan vm-monitor`, on the
//! host) and its guest agent (`hobbes-guest-agent`, the guest's init).
//!
//! One virtio-serial port named [`PORT_NAME`] carries it: QEMU's end is one
//! end of a socket pair the monitor made (QEMU inherits it), the guest sees
//! `/dev/vportNpM` (its name under `/sys/class/virtio-ports/*/name`).
//! Messages are `hobbes_proto::frame` frames (a header with a little-endian
//! length, then JSON), [`ToGuest`] one way and [`FromGuest`] the other.
//!
//! The conversation:
//! 1. the agent, once the port is open, sends [`FromGuest::Hello`];
//! 2. the monitor answers [`ToGuest::Setup`] (host directories to mount, the
//!    hostname); the agent mounts them and answers [`FromGuest::Ready`] or
//!    [`FromGuest::SetupFailed`];
//! 3. then any number of requests, each answered in order of completion
//!    (replies carry the request's `seq` or the app's id), output and exits
//!    as they happen, and a [`FromGuest::Heartbeat`] every
//!    [`HEARTBEAT_INTERVAL_MS`] whatever else is going on.
//!
//! An app's [`FromGuest::Exited`] comes after the last [`FromGuest::Output`]
//! of that app (the agent waits for its output pipes to close, up to
//! [`OUTPUT_GRACE_MS`]), so the host can close the app's output when the exit
//! arrives and lose nothing.

use hobbes_proto::model::ExitStatus;
use hobbes_proto::msg::Stream;
use serde::{Deserialize, Serialize};

/// The virtio-serial port's name (QEMU `virtserialport,name=`).
pub const PORT_NAME: &str = "org.hobbes.control";

/// The version this build speaks; [`FromGuest::Hello`] and [`ToGuest::Setup`]
/// carry it and a mismatch is refused by name.
pub const VERSION: u32 = 1;

/// How often the agent says it is alive.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// How long an app's exit waits for its output pipes to close before it is
/// reported anyway (a daemonized child may keep them open for ever).
pub const OUTPUT_GRACE_MS: u64 = 2000;

/// The most bytes one [`ToGuest::ReadFile`] returns (and one
/// [`ToGuest::WriteFile`] carries): `hobbes_proto::control::FILE_CHUNK`.
pub const FILE_CHUNK: u32 = hobbes_proto::control::FILE_CHUNK;

/// Where the host's shared tree is mounted in the guest before its parts are
/// bound to their places ([`Bind`]).
pub const EXPORT_MOUNT: &str = "/.hobbes/host";

/// The virtiofs tag of the host's shared tree.
pub const EXPORT_TAG: &str = "hobbes";

/// Monitor -> guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ToGuest {
    /// Answer to [`FromGuest::Hello`]: prepare the guest for apps.
    Setup {
        /// The monitor's [`VERSION`].
        version: u32,
        /// The guest's hostname (the enclave's name).
        hostname: String,
        /// The host's virtiofs export is there (tag [`EXPORT_TAG`]); absent:
        /// nothing of the host is shared (unprivileged hosts).
        export: bool,
        /// Directories of the export to bind into the guest's tree, in order.
        binds: Vec<Bind>,
    },
    /// Start a program.
    Launch(GuestLaunch),
    /// Send `signal` to app `app`'s process group. Answered by
    /// [`FromGuest::Done`].
    Signal {
        /// Echoed in the answer.
        seq: u64,
        /// The app.
        app: u64,
        /// The signal number.
        signal: i32,
    },
    /// Answered by [`FromGuest::Pong`].
    Ping {
        /// Echoed in the answer.
        seq: u64,
    },
    /// Read a file in the guest, with `uid`/`gid` as the file-system identity.
    /// Answered by [`FromGuest::FileData`] or [`FromGuest::Failed`].
    ReadFile {
        /// Echoed in the answer.
        seq: u64,
        /// Absolute path in the guest.
        path: String,
        /// Byte offset.
        offset: u64,
        /// At most this many bytes (capped at [`FILE_CHUNK`]).
        len: u32,
        /// File-system uid.
        uid: u32,
        /// File-system gid.
        gid: u32,
    },
    /// Write a file in the guest. Answered by [`FromGuest::Done`].
    WriteFile {
        /// Echoed in the answer.
        seq: u64,
        /// Absolute path in the guest.
        path: String,
        /// The bytes (base64 in JSON), at most [`FILE_CHUNK`].
        #[serde(with = "hobbes_proto::b64")]
        data: Vec<u8>,
        /// Append instead of truncating first.
        append: bool,
        /// Permission bits for a file this creates (masked to `0o7777`).
        mode: u32,
        /// File-system uid.
        uid: u32,
        /// File-system gid.
        gid: u32,
    },
    /// The enclave ends: kill every app, flush file systems, power off.
    Shutdown,
}

/// A directory of the host's export bound into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Path inside the export (relative, no `..`).
    pub source: String,
    /// Absolute path in the guest (made if missing).
    pub target: String,
    /// Writable; otherwise bound read-only.
    pub writable: bool,
}

/// A program to start in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLaunch {
    /// The app's id (the daemon's); names it in every later message.
    pub app: u64,
    /// Program and arguments; the program is looked up in `PATH` of `env`
    /// when it has no `/`.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest; `None`: `/`.
    pub cwd: Option<String>,
    /// Uid to run as.
    pub uid: u32,
    /// Gid to run as.
    pub gid: u32,
}

/// Guest agent -> monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub enum FromGuest {
    /// The agent is up and its port open.
    Hello {
        /// The agent's [`VERSION`].
        version: u32,
        /// The guest kernel's release (`uname -r`).
        kernel: String,
        /// Guest uptime when sent, in milliseconds.
        uptime_ms: u64,
    },
    /// [`ToGuest::Setup`] is done: apps may launch.
    Ready {
        /// Guest uptime when sent, in milliseconds.
        uptime_ms: u64,
    },
    /// [`ToGuest::Setup`] failed; the guest is of no use.
    SetupFailed {
        /// Why, for people.
        error: String,
    },
    /// A launch ran: the app's process exists.
    Started {
        /// The app.
        app: u64,
        /// Its pid in the guest.
        pid: u32,
    },
    /// A launch failed; the app never ran.
    LaunchFailed {
        /// The app.
        app: u64,
        /// Why (names the program and the reason).
        error: String,
    },
    /// Output of an app.
    Output {
        /// The app.
        app: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes (base64 in JSON).
        #[serde(with = "hobbes_proto::b64")]
        data: Vec<u8>,
    },
    /// An app ended; after its last output.
    Exited {
        /// The app.
        app: u64,
        /// How.
        status: ExitStatus,
    },
    /// Answer to [`ToGuest::Ping`].
    Pong {
        /// The ping's `seq`.
        seq: u64,
    },
    /// Answer to [`ToGuest::ReadFile`].
    FileData {
        /// The request's `seq`.
        seq: u64,
        /// The bytes read (base64 in JSON).
        #[serde(with = "hobbes_proto::b64")]
        data: Vec<u8>,
        /// Fewer bytes than asked for: the end of the file.
        eof: bool,
    },
    /// Answer to a request with no richer one ([`ToGuest::Signal`],
    /// [`ToGuest::WriteFile`]).
    Done {
        /// The request's `seq`.
        seq: u64,
        /// Why it failed; `None` on success.
        error: Option<String>,
    },
    /// A [`ToGuest::ReadFile`] failed.
    Failed {
        /// The request's `seq`.
        seq: u64,
        /// Why, for people.
        error: String,
    },
    /// The agent is alive.
    Heartbeat {
        /// Counts heartbeats.
        seq: u64,
    },
}

/// Check a [`Bind`]'s paths: a relative source without `..` and an absolute
/// target without `..`; the error names the bad one.
pub fn check_bind(bind: &Bind) -> Result<(), String> {
    let bad = |p: &str| p.split('/').any(|c| c == "..") || p.contains('\0');
    if bind.source.starts_with('/') || bad(&bind.source) {
        return Err(format!(
            "bind source {:?} must be a relative path inside the export, without \"..\"",
            bind.source
        ));
    }
    if !bind.target.starts_with('/') || bad(&bind.target) || bind.target == "/" {
        return Err(format!(
            "bind target {:?} must be an absolute path other than \"/\", without \"..\"",
            bind.target
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_json() {
        let msgs = vec![
            ToGuest::Setup {
                version: VERSION,
                hostname: "ana".into(),
                export: true,
                binds: vec![Bind {
                    source: "usr".into(),
                    target: "/usr".into(),
                    writable: false,
                }],
            },
            ToGuest::Launch(GuestLaunch {
                app: 7,
                argv: vec!["/bin/echo".into(), "hi".into()],
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: Some("/tmp".into()),
                uid: 1000,
                gid: 100,
            }),
            ToGuest::WriteFile {
                seq: 3,
                path: "/tmp/x".into(),
                data: vec![0, 1, 255],
                append: false,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            ToGuest::Shutdown,
        ];
        for m in msgs {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<ToGuest>(&json).unwrap(), m);
        }
        let out = FromGuest::Output {
            app: 7,
            stream: Stream::Stderr,
            data: b"oops\n".to_vec(),
        };
        let json = serde_json::to_string(&out).unwrap();
        assert!(json.contains(r#""msg":"output""#), "{json}");
        assert_eq!(serde_json::from_str::<FromGuest>(&json).unwrap(), out);
        let exited = FromGuest::Exited {
            app: 7,
            status: ExitStatus::Signal(11),
        };
        let json = serde_json::to_string(&exited).unwrap();
        assert_eq!(serde_json::from_str::<FromGuest>(&json).unwrap(), exited);
    }

    #[test]
    fn binds_stay_inside_the_export_and_off_the_root() {
        let b = |s: &str, t: &str| Bind {
            source: s.into(),
            target: t.into(),
            writable: false,
        };
        assert!(check_bind(&b("usr", "/usr")).is_ok());
        assert!(check_bind(&b("home/u/proj", "/home/u/proj")).is_ok());
        assert!(check_bind(&b("/usr", "/usr"))
            .unwrap_err()
            .contains("relative"));
        assert!(check_bind(&b("a/../../etc", "/x")).is_err());
        assert!(check_bind(&b("usr", "usr"))
            .unwrap_err()
            .contains("absolute"));
        assert!(check_bind(&b("usr", "/")).is_err());
        assert!(check_bind(&b("usr", "/a/../etc")).is_err());
    }
}
