//! The PMI-1 ("simple PMI") wire format: client lines to [`Command`]s, [`Reply`]s to lines.
//!
//! A client line is `cmd=NAME key=value ...\n`; a spawn request is a block of `key=value` lines
//! from `mcmd=spawn` to `endcmd`. Tokens are separated by spaces (tabs and runs of blanks are
//! accepted), a token is split at its first `=`, and a value therefore never holds a blank.
//! Nothing here trusts the peer: lines are bounded by [`MAX_LINE`], spawn blocks by
//! [`MAX_SPAWN_LINES`], and every problem is a [`WireError`] naming it.

use std::fmt;
use std::io::{self, Read};

/// Longest accepted line, newline excluded. Real lines are short (`vallen_max` is 1024); the
/// bound only stops a peer from making the server buffer without limit.
pub const MAX_LINE: usize = 64 * 1024;
/// Most `key=value` lines accepted between `mcmd=spawn` and `endcmd`.
pub const MAX_SPAWN_LINES: usize = 1024;
/// Longest KVS name, in bytes, advertised as `kvsname_max` in `cmd=maxes` (MPICH's `MPI_Init`
/// fails without it). [`JobConfig`](crate::JobConfig) names longer than this are refused.
pub const KVSNAME_MAX: usize = 256;
/// Longest key, in bytes, advertised as `keylen_max` in `cmd=maxes`. Advisory: the client keeps
/// to it, the server does not check it.
pub const KEYLEN_MAX: usize = 64;
/// Longest value, in bytes, advertised as `vallen_max` in `cmd=maxes` (required by MPICH).
/// The client splits longer values into several keys itself.
pub const VALLEN_MAX: usize = 1024;

/// Why client bytes are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A line (newline excluded) exceeded [`MAX_LINE`] bytes; the connection is closed.
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The line is not valid UTF-8; the connection is closed.
    #[error("line is not UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset in the line of the first byte that is not valid UTF-8.
        offset: usize,
    },
    /// The line holds a NUL byte; the connection is closed.
    #[error("line contains a NUL byte at offset {offset}")]
    Nul {
        /// Byte offset in the line of the first NUL.
        offset: usize,
    },
    /// The first token is neither `cmd=...` nor `mcmd=...`; the connection is closed.
    #[error("line does not start with cmd= or mcmd=: {start:?}")]
    NoCommand {
        /// The start of the line (at most 64 characters), for the log.
        start: String,
    },
    /// A token has no `=` or an empty key; the connection is closed.
    #[error("token {token:?} is not key=value")]
    BadToken {
        /// The offending token (at most 64 characters).
        token: String,
    },
    /// `cmd=NAME` with a name this server does not know; the connection is closed.
    #[error("unknown command {name:?}")]
    UnknownCommand {
        /// The unknown name (at most 64 characters).
        name: String,
    },
    /// A known command lacks a required field, or has it empty. For `get`, `put` and the name
    /// commands the client gets an `rc` reply ([`WireError::error_reply`]) and goes on; for
    /// `initack` (no `pmiid`) the connection is closed.
    #[error("command {cmd} lacks field {field}")]
    MissingField {
        /// The command's wire name, e.g. `"put"`.
        cmd: &'static str,
        /// The missing field's wire name, e.g. `"key"`.
        field: &'static str,
    },
    /// A numeric field (`pmiid`, `pmi_version`, `pmi_subversion`) does not parse as a
    /// non-negative 32-bit number; the connection is closed.
    #[error("command {cmd}: field {field}={value:?} is not a number")]
    BadNumber {
        /// The command's wire name, e.g. `"init"`.
        cmd: &'static str,
        /// The field's wire name, e.g. `"pmi_version"`.
        field: &'static str,
        /// The value sent (at most 64 characters).
        value: String,
    },
    /// `mcmd=NAME` with a name other than `spawn`; the connection is closed.
    #[error("unknown multi-line command mcmd={name:?}")]
    UnknownMultiCommand {
        /// The unknown name (at most 64 characters).
        name: String,
    },
    /// A spawn block already held [`MAX_SPAWN_LINES`] fields and another line came instead of
    /// `endcmd`; the connection is closed.
    #[error("spawn block longer than {MAX_SPAWN_LINES} lines")]
    SpawnTooLong,
    /// The stream ended inside a spawn block (after `mcmd=spawn`, before `endcmd`).
    #[error("spawn block not closed by endcmd before the connection ended")]
    SpawnUnterminated,
}

impl WireError {
    /// The reply PMI has for this error, if the failing command has an `rc` in its reply
    /// (the client then carries on); `None` means the connection must be closed.
    pub fn error_reply(&self) -> Option<Reply> {
        let (cmd, msg) = match self {
            WireError::MissingField { cmd, field } => (*cmd, format!("missing_{field}")),
            WireError::BadNumber { cmd, field, .. } => (*cmd, format!("bad_{field}")),
            _ => return None,
        };
        Some(match cmd {
            "get" => Reply::GetResult(Err(msg)),
            "put" => Reply::PutResult(Err(msg)),
            "publish_name" => Reply::PublishResult(Err(msg)),
            "lookup_name" => Reply::LookupResult(Err(msg)),
            "unpublish_name" => Reply::UnpublishResult(Err(msg)),
            _ => return None,
        })
    }
}

/// One request from a PMI client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// TCP mode handshake: `cmd=initack pmiid=N`, the first line on a `PMI_PORT` connection.
    InitAck {
        /// The `PMI_ID` the launcher gave this process: the rank it claims, `0 <= pmiid < size`
        /// for the connection to be accepted.
        pmiid: u32,
    },
    /// `cmd=init pmi_version=V pmi_subversion=S`, the first command of every rank (after the TCP
    /// handshake). Answered with [`Reply::ResponseToInit`] (always version 1.1, `rc=0`).
    Init {
        /// `pmi_version`, `None` when absent (MPICH sends 1).
        version: Option<u32>,
        /// `pmi_subversion`, `None` when absent (MPICH sends 1).
        subversion: Option<u32>,
    },
    /// `cmd=get_maxes`: asks the limits; answered with [`Reply::Maxes`].
    GetMaxes,
    /// `cmd=get_appnum`: asks the index of this rank's application; answered with
    /// [`Reply::Appnum`].
    GetAppnum,
    /// `cmd=get_my_kvsname`: asks the job's KVS name; answered with [`Reply::MyKvsname`].
    GetMyKvsname,
    /// `cmd=get_universe_size`: answered with [`Reply::UniverseSize`].
    GetUniverseSize,
    /// `cmd=get kvsname=K key=k`: read one key of the job's key/value space; answered with
    /// [`Reply::GetResult`].
    Get {
        /// The KVS named by the client; `None` when absent (taken as the job's own). A name
        /// other than the job's gets `rc=-1 msg=kvs_<K>_not_found`.
        kvsname: Option<String>,
        /// The key, never empty (an empty or missing key is [`WireError::MissingField`]).
        key: String,
    },
    /// `cmd=put kvsname=K key=k value=v`: set one key, visible at once to every rank (there is
    /// no commit); answered with [`Reply::PutResult`]. A missing `value=` is an empty value.
    Put {
        /// The KVS named by the client; `None` when absent (taken as the job's own).
        kvsname: Option<String>,
        /// The key, never empty.
        key: String,
        /// The value, a single token (clients hex-encode binary data); may be empty.
        value: String,
    },
    /// `cmd=barrier_in`: this rank entered the job's current barrier; answered with
    /// [`Reply::BarrierOut`] only once every rank has entered it.
    BarrierIn,
    /// `cmd=publish_name service=S port=P`: publish a name in the job's name service;
    /// answered with [`Reply::PublishResult`].
    PublishName {
        /// The service name, never empty.
        service: String,
        /// The port string to publish (opaque to the server), never empty.
        port: String,
    },
    /// `cmd=lookup_name service=S`: answered with [`Reply::LookupResult`].
    LookupName {
        /// The service name, never empty.
        service: String,
    },
    /// `cmd=unpublish_name service=S`: answered with [`Reply::UnpublishResult`].
    UnpublishName {
        /// The service name, never empty.
        service: String,
    },
    /// `cmd=finalize`: the rank is done; answered with [`Reply::FinalizeAck`], after which the
    /// client closes the connection.
    Finalize,
    /// `cmd=abort exitcode=N`: the rank asks for the whole job to be killed. Never answered:
    /// the client blocks until the launcher kills it.
    Abort {
        /// `None` when absent or not a number (the launcher then reports 1): an abort is
        /// still an abort.
        exitcode: Option<i32>,
    },
    /// A whole `mcmd=spawn ... endcmd` block; answered (when [`SpawnRequest::is_last`]) with
    /// [`Reply::SpawnResult`], which is always "not supported".
    Spawn(SpawnRequest),
}

/// The `key=value` lines of one `mcmd=spawn ... endcmd` block, in order (parsed only so far as
/// to answer it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnRequest {
    /// `(key, value)` pairs in the order received; keys may repeat (one set per spawned
    /// command). A line arriving once it holds [`MAX_SPAWN_LINES`] pairs is refused.
    pub fields: Vec<(String, String)>,
}

impl SpawnRequest {
    /// The value of the first field named `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A multi-spawn sends `totspawns` blocks and reads one reply after the last one.
    /// Without usable counters, every block is the last.
    pub fn is_last(&self) -> bool {
        let num = |k| self.get(k).and_then(|v| v.parse::<u64>().ok());
        match (num("spawnssofar"), num("totspawns")) {
            (Some(sofar), Some(total)) => sofar >= total,
            _ => true,
        }
    }
}

/// One reply line from the server. `Err(msg)` variants carry an rc!=0 reason; `msg` must be a
/// single token (no blanks), which [`token_safe`] guarantees for messages built here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The four TCP handshake lines (`initack`, `set size`, `set rank`, `set debug`).
    InitAck {
        /// The job's size (number of ranks), sent as `cmd=set size=`.
        size: u32,
        /// The rank this connection serves (the client's `pmiid`), sent as `cmd=set rank=`.
        rank: u32,
    },
    /// `cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0`, the answer to
    /// [`Command::Init`] whatever version the client asked for.
    ResponseToInit,
    /// `cmd=maxes` with [`KVSNAME_MAX`], [`KEYLEN_MAX`] and [`VALLEN_MAX`].
    Maxes,
    /// `cmd=appnum appnum=N`: the index of the rank's application within the job (0 for a
    /// single-application job).
    Appnum(u32),
    /// `cmd=my_kvsname kvsname=K`: the job's KVS name (a single token).
    MyKvsname(String),
    /// `cmd=universe_size size=N rc=0`: the number of ranks the job can hold.
    UniverseSize(u32),
    /// `cmd=get_result`: `Ok(value)` (`rc=0 msg=success value=<v>`) or `Err(msg)`
    /// (`rc=-1 msg=<msg> value=unknown`, e.g. `key_<k>_not_found`).
    GetResult(Result<String, String>),
    /// `cmd=put_result`: `rc=0 msg=success`, or `rc=-1 msg=<msg>` (e.g. `kvs_full`).
    PutResult(Result<(), String>),
    /// `cmd=barrier_out`: the barrier this rank entered is complete.
    BarrierOut,
    /// `cmd=publish_result`: `info=ok rc=0`, or `info=fail rc=1 msg=<msg>` (e.g. the name is
    /// already published).
    PublishResult(Result<(), String>),
    /// `cmd=lookup_result`: `Ok(port)` (`info=ok port=<port> rc=0`) or `Err(msg)`
    /// (`info=fail rc=1`, e.g. `service_<S>_not_found`).
    LookupResult(Result<String, String>),
    /// `cmd=unpublish_result`: `info=ok rc=0`, or `info=fail rc=1 msg=<msg>`.
    UnpublishResult(Result<(), String>),
    /// `cmd=finalize_ack`, the answer to [`Command::Finalize`].
    FinalizeAck,
    /// `cmd=spawn_result`: `rc=0 msg=success` or `rc=-1 msg=<msg>` (this server always sends
    /// `spawn_not_supported`).
    SpawnResult(Result<(), String>),
}

impl fmt::Display for Reply {
    /// The exact bytes sent, newline(s) included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::InitAck { size, rank } => write!(
                f,
                "cmd=initack\ncmd=set size={size}\ncmd=set rank={rank}\ncmd=set debug=0\n"
            ),
            Reply::ResponseToInit => {
                writeln!(f, "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0")
            }
            Reply::Maxes => writeln!(
                f,
                "cmd=maxes kvsname_max={KVSNAME_MAX} keylen_max={KEYLEN_MAX} vallen_max={VALLEN_MAX}"
            ),
            Reply::Appnum(n) => writeln!(f, "cmd=appnum appnum={n}"),
            Reply::MyKvsname(name) => writeln!(f, "cmd=my_kvsname kvsname={name}"),
            Reply::UniverseSize(n) => writeln!(f, "cmd=universe_size size={n} rc=0"),
            Reply::GetResult(Ok(v)) => writeln!(f, "cmd=get_result rc=0 msg=success value={v}"),
            Reply::GetResult(Err(m)) => writeln!(f, "cmd=get_result rc=-1 msg={m} value=unknown"),
            Reply::PutResult(r) => writeln!(f, "cmd=put_result {}", rc_msg(r, "-1")),
            Reply::BarrierOut => writeln!(f, "cmd=barrier_out"),
            Reply::PublishResult(Ok(())) => {
                writeln!(f, "cmd=publish_result info=ok rc=0 msg=success")
            }
            Reply::PublishResult(Err(m)) => {
                writeln!(f, "cmd=publish_result info=fail rc=1 msg={m}")
            }
            Reply::LookupResult(Ok(port)) => writeln!(
                f,
                "cmd=lookup_result info=ok port={port} rc=0 msg=success"
            ),
            Reply::LookupResult(Err(m)) => writeln!(f, "cmd=lookup_result info=fail rc=1 msg={m}"),
            Reply::UnpublishResult(Ok(())) => {
                writeln!(f, "cmd=unpublish_result info=ok rc=0 msg=success")
            }
            Reply::UnpublishResult(Err(m)) => {
                writeln!(f, "cmd=unpublish_result info=fail rc=1 msg={m}")
            }
            Reply::FinalizeAck => writeln!(f, "cmd=finalize_ack"),
            Reply::SpawnResult(r) => writeln!(f, "cmd=spawn_result {}", rc_msg(r, "-1")),
        }
    }
}

fn rc_msg(r: &Result<(), String>, fail_rc: &str) -> String {
    match r {
        Ok(()) => "rc=0 msg=success".to_owned(),
        Err(m) => format!("rc={fail_rc} msg={m}"),
    }
}

/// Make `s` one reply token: blanks, `=` and control characters become `_`.
pub fn token_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() || c == '=' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Check bytes of one line (newline stripped) and return it as text.
fn line_text(line: &[u8]) -> Result<&str, WireError> {
    if line.len() > MAX_LINE {
        return Err(WireError::LineTooLong);
    }
    if let Some(offset) = line.iter().position(|&b| b == 0) {
        return Err(WireError::Nul { offset });
    }
    let text = std::str::from_utf8(line).map_err(|e| WireError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(text.strip_suffix('\r').unwrap_or(text))
}

/// Split a line into `(key, value)` tokens.
fn tokens(text: &str) -> Result<Vec<(&str, &str)>, WireError> {
    text.split([' ', '\t'])
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k, v)),
            _ => Err(WireError::BadToken {
                token: t.chars().take(64).collect(),
            }),
        })
        .collect()
}

/// First value of `key` (the C client library also reads the first one).
fn field<'a>(toks: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    toks.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn required(
    toks: &[(&str, &str)],
    cmd: &'static str,
    key: &'static str,
) -> Result<String, WireError> {
    match field(toks, key) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(WireError::MissingField { cmd, field: key }),
    }
}

fn number<T: std::str::FromStr>(
    toks: &[(&str, &str)],
    cmd: &'static str,
    key: &'static str,
) -> Result<Option<T>, WireError> {
    field(toks, key)
        .map(|v| {
            v.parse().map_err(|_| WireError::BadNumber {
                cmd,
                field: key,
                value: v.chars().take(64).collect(),
            })
        })
        .transpose()
}

/// What one line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Nothing but blanks: ignored.
    Blank,
    /// A complete single-line command.
    Command(Command),
    /// `mcmd=spawn`: `key=value` lines follow until `endcmd`.
    SpawnStart,
}

/// Parse one single-line command (newline stripped; a trailing `\r` is accepted).
pub fn parse_line(line: &[u8]) -> Result<Line, WireError> {
    let text = line_text(line)?;
    let toks = tokens(text)?;
    let Some(&(first_key, name)) = toks.first() else {
        return Ok(Line::Blank);
    };
    match first_key {
        "cmd" => parse_cmd(name, &toks[1..]).map(Line::Command),
        "mcmd" if name == "spawn" => Ok(Line::SpawnStart),
        "mcmd" => Err(WireError::UnknownMultiCommand {
            name: name.chars().take(64).collect(),
        }),
        _ => Err(WireError::NoCommand {
            start: text.chars().take(64).collect(),
        }),
    }
}

fn parse_cmd(name: &str, toks: &[(&str, &str)]) -> Result<Command, WireError> {
    Ok(match name {
        "initack" => Command::InitAck {
            pmiid: number(toks, "initack", "pmiid")?.ok_or(WireError::MissingField {
                cmd: "initack",
                field: "pmiid",
            })?,
        },
        "init" => Command::Init {
            version: number(toks, "init", "pmi_version")?,
            subversion: number(toks, "init", "pmi_subversion")?,
        },
        "get_maxes" => Command::GetMaxes,
        "get_appnum" => Command::GetAppnum,
        "get_my_kvsname" => Command::GetMyKvsname,
        "get_universe_size" => Command::GetUniverseSize,
        "get" => Command::Get {
            kvsname: field(toks, "kvsname").map(str::to_owned),
            key: required(toks, "get", "key")?,
        },
        "put" => Command::Put {
            kvsname: field(toks, "kvsname").map(str::to_owned),
            key: required(toks, "put", "key")?,
            value: field(toks, "value").unwrap_or("").to_owned(),
        },
        "barrier_in" => Command::BarrierIn,
        "publish_name" => Command::PublishName {
            service: required(toks, "publish_name", "service")?,
            port: required(toks, "publish_name", "port")?,
        },
        "lookup_name" => Command::LookupName {
            service: required(toks, "lookup_name", "service")?,
        },
        "unpublish_name" => Command::UnpublishName {
            service: required(toks, "unpublish_name", "service")?,
        },
        "finalize" => Command::Finalize,
        "abort" => Command::Abort {
            exitcode: field(toks, "exitcode").and_then(|v| v.parse().ok()),
        },
        other => {
            return Err(WireError::UnknownCommand {
                name: other.chars().take(64).collect(),
            })
        }
    })
}

/// Parse the body of a spawn block: one `key=value` per line, `endcmd` excluded.
pub fn parse_spawn_line(line: &[u8], req: &mut SpawnRequest) -> Result<(), WireError> {
    let text = line_text(line)?;
    if req.fields.len() >= MAX_SPAWN_LINES {
        return Err(WireError::SpawnTooLong);
    }
    for (k, v) in tokens(text)? {
        req.fields.push((k.to_owned(), v.to_owned()));
    }
    Ok(())
}

/// Reads commands from a byte stream, one line (or spawn block) at a time, with bounded
/// buffering. Holds no borrow of the stream, so the same stream can be written in between.
#[derive(Debug, Default)]
pub struct CommandReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for a newline.
    scanned: usize,
    eof: bool,
}

/// Why [`CommandReader::next_command`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent something that is not a command (see [`WireError`]); the connection
    /// should be closed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Reading the stream failed (including an interrupted or timed-out read).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl CommandReader {
    /// A reader with an empty buffer, at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next raw line (newline stripped), `Ok(None)` at a clean end of stream. A final
    /// line without newline counts as a line.
    pub fn next_line<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(WireError::LineTooLong.into());
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let mut chunk = [0u8; 4096];
            match r.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next command, `Ok(None)` at a clean end of stream. Blank lines are skipped.
    pub fn next_command<R: Read + ?Sized>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Command>, ReadError> {
        loop {
            let Some(line) = self.next_line(r)? else {
                return Ok(None);
            };
            match parse_line(&line)? {
                Line::Blank => continue,
                Line::Command(c) => return Ok(Some(c)),
                Line::SpawnStart => return self.spawn_block(r).map(Some),
            }
        }
    }

    fn spawn_block<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Command, ReadError> {
        let mut req = SpawnRequest::default();
        loop {
            let Some(line) = self.next_line(r)? else {
                return Err(WireError::SpawnUnterminated.into());
            };
            if line_text(&line)?.trim() == "endcmd" {
                return Ok(Command::Spawn(req));
            }
            parse_spawn_line(&line, &mut req)?;
        }
    }
}

/// Parse every command in `bytes` as a server would read them, stopping at the first error.
pub fn parse_all(bytes: &[u8]) -> (Vec<Command>, Option<WireError>) {
    let mut reader = CommandReader::new();
    let mut input = bytes;
    let mut out = Vec::new();
    loop {
        match reader.next_command(&mut input) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => return (out, None),
            Err(ReadError::Wire(e)) => return (out, Some(e)),
            // Reading a slice cannot fail.
            Err(ReadError::Io(_)) => return (out, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(line: &str) -> Result<Command, WireError> {
        match parse_line(line.as_bytes())? {
            Line::Command(c) => Ok(c),
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn the_mpich_sequence_parses() {
        assert_eq!(
            one("cmd=init pmi_version=1 pmi_subversion=1").unwrap(),
            Command::Init {
                version: Some(1),
                subversion: Some(1)
            }
        );
        assert_eq!(one("cmd=get_maxes").unwrap(), Command::GetMaxes);
        assert_eq!(one("cmd=get_appnum").unwrap(), Command::GetAppnum);
        assert_eq!(one("cmd=get_my_kvsname").unwrap(), Command::GetMyKvsname);
        assert_eq!(
            one("cmd=get kvsname=kvs_1_0 key=PMI_process_mapping").unwrap(),
            Command::Get {
                kvsname: Some("kvs_1_0".into()),
                key: "PMI_process_mapping".into()
            }
        );
        assert_eq!(one("cmd=barrier_in").unwrap(), Command::BarrierIn);
        assert_eq!(
            one("cmd=put kvsname=kvs_1_0 key=-bcast-1-0 value=2F6465762F73686D").unwrap(),
            Command::Put {
                kvsname: Some("kvs_1_0".into()),
                key: "-bcast-1-0".into(),
                value: "2F6465762F73686D".into()
            }
        );
        assert_eq!(one("cmd=finalize").unwrap(), Command::Finalize);
        assert_eq!(
            one("cmd=abort exitcode=7").unwrap(),
            Command::Abort { exitcode: Some(7) }
        );
        assert_eq!(
            one("cmd=initack pmiid=3").unwrap(),
            Command::InitAck { pmiid: 3 }
        );
    }

    #[test]
    fn liberal_spacing_and_missing_trailing_fields() {
        assert_eq!(
            one("  cmd=put \t key=k   value=a=b  \r").unwrap(),
            Command::Put {
                kvsname: None,
                key: "k".into(),
                value: "a=b".into()
            }
        );
        assert_eq!(
            one("cmd=put key=k").unwrap(),
            Command::Put {
                kvsname: None,
                key: "k".into(),
                value: String::new()
            }
        );
        assert_eq!(
            one("cmd=init").unwrap(),
            Command::Init {
                version: None,
                subversion: None
            }
        );
        assert_eq!(one("cmd=abort").unwrap(), Command::Abort { exitcode: None });
        assert_eq!(parse_line(b"   ").unwrap(), Line::Blank);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            one("cmd=get kvsname=x").unwrap_err(),
            WireError::MissingField {
                cmd: "get",
                field: "key"
            }
        );
        assert!(matches!(
            one("cmd=frobnicate").unwrap_err(),
            WireError::UnknownCommand { name } if name == "frobnicate"
        ));
        assert!(matches!(
            parse_line(b"hello world").unwrap_err(),
            WireError::BadToken { .. }
        ));
        assert!(matches!(
            parse_line(b"key=v cmd=get").unwrap_err(),
            WireError::NoCommand { .. }
        ));
        assert_eq!(
            parse_line(b"cmd=get\0").unwrap_err(),
            WireError::Nul { offset: 7 }
        );
        assert_eq!(
            parse_line(b"cmd=\xff").unwrap_err(),
            WireError::NotUtf8 { offset: 4 }
        );
        assert!(matches!(
            one("cmd=initack pmiid=x").unwrap_err(),
            WireError::BadNumber { .. }
        ));
    }

    #[test]
    fn errors_with_a_pmi_reply() {
        let e = one("cmd=get").unwrap_err();
        assert_eq!(
            e.error_reply().unwrap().to_string(),
            "cmd=get_result rc=-1 msg=missing_key value=unknown\n"
        );
        assert!(WireError::LineTooLong.error_reply().is_none());
        assert!(one("cmd=initack").unwrap_err().error_reply().is_none());
    }

    #[test]
    fn replies_are_exact() {
        let cases = [
            (
                Reply::ResponseToInit,
                "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n",
            ),
            (
                Reply::Maxes,
                "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n",
            ),
            (Reply::Appnum(2), "cmd=appnum appnum=2\n"),
            (
                Reply::MyKvsname("kvs_9_0".into()),
                "cmd=my_kvsname kvsname=kvs_9_0\n",
            ),
            (
                Reply::GetResult(Ok("(vector,(0,1,2))".into())),
                "cmd=get_result rc=0 msg=success value=(vector,(0,1,2))\n",
            ),
            (
                Reply::GetResult(Err("key_k_not_found".into())),
                "cmd=get_result rc=-1 msg=key_k_not_found value=unknown\n",
            ),
            (
                Reply::PutResult(Ok(())),
                "cmd=put_result rc=0 msg=success\n",
            ),
            (Reply::BarrierOut, "cmd=barrier_out\n"),
            (Reply::UniverseSize(4), "cmd=universe_size size=4 rc=0\n"),
            (
                Reply::PublishResult(Ok(())),
                "cmd=publish_result info=ok rc=0 msg=success\n",
            ),
            (
                Reply::LookupResult(Ok("P".into())),
                "cmd=lookup_result info=ok port=P rc=0 msg=success\n",
            ),
            (
                Reply::UnpublishResult(Ok(())),
                "cmd=unpublish_result info=ok rc=0 msg=success\n",
            ),
            (Reply::FinalizeAck, "cmd=finalize_ack\n"),
            (
                Reply::InitAck { size: 2, rank: 1 },
                "cmd=initack\ncmd=set size=2\ncmd=set rank=1\ncmd=set debug=0\n",
            ),
            (
                Reply::SpawnResult(Err("spawn_not_supported".into())),
                "cmd=spawn_result rc=-1 msg=spawn_not_supported\n",
            ),
        ];
        for (reply, text) in cases {
            assert_eq!(reply.to_string(), text);
        }
    }

    #[test]
    fn spawn_blocks() {
        let block = b"mcmd=spawn\nnprocs=2\nexecname=/bin/x\ntotspawns=2\nspawnssofar=1\nendcmd\n\
                      mcmd=spawn\nnprocs=1\ntotspawns=2\nspawnssofar=2\nendcmd\ncmd=finalize\n";
        let (cmds, err) = parse_all(block);
        assert_eq!(err, None);
        assert_eq!(cmds.len(), 3);
        let Command::Spawn(first) = &cmds[0] else {
            panic!("{cmds:?}")
        };
        assert_eq!(first.get("execname"), Some("/bin/x"));
        assert!(!first.is_last());
        let Command::Spawn(second) = &cmds[1] else {
            panic!("{cmds:?}")
        };
        assert!(second.is_last());
        assert_eq!(cmds[2], Command::Finalize);

        let (_, err) = parse_all(b"mcmd=spawn\nnprocs=2\n");
        assert_eq!(err, Some(WireError::SpawnUnterminated));
        let endless = "mcmd=spawn\n".to_owned() + &"a=b\n".repeat(MAX_SPAWN_LINES + 1);
        assert_eq!(
            parse_all(endless.as_bytes()).1,
            Some(WireError::SpawnTooLong)
        );
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut long = b"cmd=put key=k value=".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        assert_eq!(parse_all(&long).1, Some(WireError::LineTooLong));
        // Just under the bound is fine.
        let mut ok = b"cmd=put key=k value=".to_vec();
        ok.resize(MAX_LINE, b'a');
        ok.push(b'\n');
        assert_eq!(
            parse_all(&ok),
            (
                vec![one(std::str::from_utf8(&ok[..ok.len() - 1]).unwrap()).unwrap()],
                None
            )
        );
    }

    #[test]
    fn final_line_without_newline_counts() {
        assert_eq!(
            parse_all(b"cmd=barrier_in\n\n\ncmd=finalize"),
            (vec![Command::BarrierIn, Command::Finalize], None)
        );
    }

    /// One byte per read, with interruptions: framing must not depend on read sizes.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.0.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn parse_trickled(bytes: &[u8]) -> (Vec<Command>, Option<WireError>) {
        let mut reader = CommandReader::new();
        let mut input = Trickle(bytes, 0);
        let mut out = Vec::new();
        loop {
            match reader.next_command(&mut input) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => return (out, None),
                Err(ReadError::Wire(e)) => return (out, Some(e)),
                Err(ReadError::Io(e)) => panic!("{e}"),
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = parse_line(&bytes);
            let (_, err) = parse_all(&bytes);
            if let Some(e) = err {
                let _ = e.error_reply().map(|r| r.to_string());
                let _ = e.to_string();
            }
        }

        #[test]
        fn command_shaped_text_never_panics(
            name in "(init|initack|get|put|get_maxes|barrier_in|abort|publish_name|lookup_name|spawn|x)",
            fields in proptest::collection::vec(("[a-z_]{0,8}", "[ -~]{0,12}"), 0..6),
        ) {
            let mut line = format!("cmd={name}");
            for (k, v) in &fields {
                line.push_str(&format!(" {k}={v}"));
            }
            if let Err(e) = parse_line(line.as_bytes()) {
                if let Some(reply) = e.error_reply() {
                    // An error reply is always exactly one line.
                    let text = reply.to_string();
                    prop_assert_eq!(text.matches('\n').count(), 1);
                }
            }
        }

        #[test]
        fn framing_is_independent_of_read_sizes(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b' '), Just(b'='), any::<u8>(), Just(b'c')], 0..256)
        ) {
            prop_assert_eq!(parse_all(&bytes), parse_trickled(&bytes));
        }
    }
}
