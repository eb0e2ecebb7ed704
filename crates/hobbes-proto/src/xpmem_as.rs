//! The whole-address-space XPMEM wire: what an attacher and the owner of a
//! whole-address-space share (`xpmem_make(NULL, XPMEM_MAXADDR_SIZE, ..)`)
//! say to each other over the owner's `SOCK_SEQPACKET` socket, and the
//! header of the share's *control memfd* that names that socket
//! (docs/protocol.md §8, docs/xemem.md "Whole-address-space shares").
//! Pure encoding and validation, no I/O: `hobbes_xemem` does the I/O.
//!
//! Every message is one datagram, little endian, fixed layout. The bytes
//! come from another process, maybe a hostile one: a bad message is an
//! error naming the problem, never a panic.

use std::fmt;

/// First 4 bytes of a request.
pub const REQUEST_MAGIC: [u8; 4] = *b"XPAS";
/// First 4 bytes of a reply.
pub const REPLY_MAGIC: [u8; 4] = *b"XPAR";
/// The wire version this build speaks.
pub const VERSION: u16 = 1;
/// Bytes of a request.
pub const REQUEST_SIZE: usize = 32;
/// Bytes of a reply without its message.
pub const REPLY_HEADER_SIZE: usize = 24;
/// Longest message a reply may carry.
pub const MAX_MESSAGE: usize = 256;
/// First 8 bytes of a control memfd.
pub const CONTROL_MAGIC: [u8; 8] = *b"XPMEMWAS";
/// Bytes of the control header; the control memfd is one page.
pub const CONTROL_SIZE: usize = 128;
/// Longest socket name in the control header.
pub const MAX_SOCKET_NAME: usize = 107;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Authenticate with the control memfd (one descriptor attached); the
    /// reply carries the address-space file (read-only when the control
    /// descriptor is).
    Hello = 1,
    /// Make `[vaddr, vaddr+len)` of the owner's memory part of the
    /// address-space file (offset = address), converting it in place where
    /// it is not yet.
    Ensure = 2,
}

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What it asks.
    pub op: Op,
    /// First byte (page-aligned for `Ensure`; 0 for `Hello`).
    pub vaddr: u64,
    /// Bytes (a non-zero multiple of the page for `Ensure`; 0 for `Hello`).
    pub len: u64,
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's op.
    pub op: Op,
    /// 0, or the errno of the failure.
    pub status: i32,
    /// With `EFAULT`, the first address that is not mapped (or not
    /// exportable); else 0.
    pub addr: u64,
    /// A message for a failure ("" on success), at most [`MAX_MESSAGE`] bytes.
    pub message: String,
}

/// The control memfd's header: where the owner listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The owner's pid (in its own PID namespace; informational).
    pub pid: u32,
    /// The abstract Unix socket name, without the leading NUL.
    pub socket: Vec<u8>,
}

/// A message or header that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn op_of(v: u16) -> Result<Op, WireError> {
    match v {
        1 => Ok(Op::Hello),
        2 => Ok(Op::Ensure),
        other => Err(bad(format!("unknown op {other}"))),
    }
}

/// Check magic and version, shared by requests and replies.
fn check_head(b: &[u8], magic: [u8; 4], what: &str) -> Result<(), WireError> {
    if b[0..4] != magic {
        return Err(bad(format!("{what}: bad magic {:02x?}", &b[0..4])));
    }
    let version = u16_at(b, 4);
    if version != VERSION {
        return Err(bad(format!(
            "{what}: version {version}, this build speaks {VERSION}"
        )));
    }
    Ok(())
}

impl Request {
    /// The request's bytes.
    pub fn encode(&self) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        b[0..4].copy_from_slice(&REQUEST_MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decode one request datagram. Alignment against the owner's page
    /// size is the owner's check; this one checks the layout, that the
    /// range does not wrap, and that a `Hello` names no range.
    pub fn decode(b: &[u8]) -> Result<Request, WireError> {
        if b.len() != REQUEST_SIZE {
            return Err(bad(format!(
                "request of {} bytes, expected {REQUEST_SIZE}",
                b.len()
            )));
        }
        check_head(b, REQUEST_MAGIC, "request")?;
        let op = op_of(u16_at(b, 6))?;
        if u32_at(b, 8) != 0 || u32_at(b, 12) != 0 {
            return Err(bad("request: reserved bytes 8..16 are not zero"));
        }
        let (vaddr, len) = (u64_at(b, 16), u64_at(b, 24));
        match op {
            Op::Hello if vaddr != 0 || len != 0 => Err(bad("hello names a range")),
            Op::Ensure if len == 0 => Err(bad("ensure of 0 bytes")),
            Op::Ensure if vaddr.checked_add(len).is_none() => Err(bad(format!(
                "range {vaddr:#x}+{len:#x} wraps around the address space"
            ))),
            _ => Ok(Request { op, vaddr, len }),
        }
    }
}

impl Reply {
    /// A success.
    pub fn ok(op: Op) -> Reply {
        Reply {
            op,
            status: 0,
            addr: 0,
            message: String::new(),
        }
    }

    /// The reply's bytes; a message beyond [`MAX_MESSAGE`] bytes is cut at
    /// a character boundary.
    pub fn encode(&self) -> Vec<u8> {
        let mut end = self.message.len().min(MAX_MESSAGE);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let mut b = vec![0u8; REPLY_HEADER_SIZE];
        b[0..4].copy_from_slice(&REPLY_MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b.extend_from_slice(&self.message.as_bytes()[..end]);
        b
    }

    /// Decode one reply datagram.
    pub fn decode(b: &[u8]) -> Result<Reply, WireError> {
        if b.len() < REPLY_HEADER_SIZE || b.len() > REPLY_HEADER_SIZE + MAX_MESSAGE {
            return Err(bad(format!(
                "reply of {} bytes, expected {REPLY_HEADER_SIZE}..={}",
                b.len(),
                REPLY_HEADER_SIZE + MAX_MESSAGE
            )));
        }
        check_head(b, REPLY_MAGIC, "reply")?;
        let op = op_of(u16_at(b, 6))?;
        let status = u32_at(b, 8) as i32;
        if status < 0 {
            return Err(bad(format!("reply: negative status {status}")));
        }
        if u32_at(b, 12) != 0 {
            return Err(bad("reply: reserved bytes 12..16 are not zero"));
        }
        let message = std::str::from_utf8(&b[REPLY_HEADER_SIZE..])
            .map_err(|_| bad("reply: message is not UTF-8"))?
            .to_owned();
        Ok(Reply {
            op,
            status,
            addr: u64_at(b, 16),
            message,
        })
    }
}

impl Control {
    /// The header's bytes ([`CONTROL_SIZE`]); `None` when the socket name
    /// is empty or longer than [`MAX_SOCKET_NAME`].
    pub fn encode(&self) -> Option<[u8; CONTROL_SIZE]> {
        if self.socket.is_empty() || self.socket.len() > MAX_SOCKET_NAME {
            return None;
        }
        let mut b = [0u8; CONTROL_SIZE];
        b[0..8].copy_from_slice(&CONTROL_MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(self.socket.len() as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.pid.to_le_bytes());
        b[16..16 + self.socket.len()].copy_from_slice(&self.socket);
        Some(b)
    }

    /// True when `b` starts like a control header (a segment is a
    /// whole-address-space share): the magic only.
    pub fn is_control(b: &[u8]) -> bool {
        b.len() >= CONTROL_MAGIC.len() && b[..CONTROL_MAGIC.len()] == CONTROL_MAGIC
    }

    /// Decode a control header (the first [`CONTROL_SIZE`] bytes of the
    /// control memfd).
    pub fn decode(b: &[u8]) -> Result<Control, WireError> {
        if b.len() < CONTROL_SIZE {
            return Err(bad(format!(
                "control header of {} bytes, expected {CONTROL_SIZE}",
                b.len()
            )));
        }
        if !Control::is_control(b) {
            return Err(bad("control header: bad magic"));
        }
        let version = u16_at(b, 8);
        if version != VERSION {
            return Err(bad(format!(
                "control header: version {version}, this build speaks {VERSION}"
            )));
        }
        let len = u16_at(b, 10) as usize;
        if len == 0 || len > MAX_SOCKET_NAME {
            return Err(bad(format!("control header: socket name of {len} bytes")));
        }
        if b[16 + len..CONTROL_SIZE].iter().any(|&x| x != 0) {
            return Err(bad("control header: bytes after the socket name"));
        }
        Ok(Control {
            pid: u32_at(b, 12),
            socket: b[16..16 + len].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let r = Request {
            op: Op::Ensure,
            vaddr: 0x7f00_0000_0000,
            len: 1 << 26,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        let h = Request {
            op: Op::Hello,
            vaddr: 0,
            len: 0,
        };
        assert_eq!(Request::decode(&h.encode()), Ok(h));
        assert!(Request::decode(&[0; 5]).unwrap_err().0.contains("5 bytes"));
        let mut b = r.encode();
        b[6] = 9;
        assert!(Request::decode(&b).unwrap_err().0.contains("unknown op 9"));
        let mut b = r.encode();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Request::decode(&b).unwrap_err().0.contains("wraps"));
        let mut b = r.encode();
        b[24..32].copy_from_slice(&0u64.to_le_bytes());
        assert!(Request::decode(&b).unwrap_err().0.contains("0 bytes"));
        let mut b = h.encode();
        b[16] = 1;
        assert!(Request::decode(&b).unwrap_err().0.contains("names a range"));
        let mut b = r.encode();
        b[4] = 2;
        assert!(Request::decode(&b).unwrap_err().0.contains("version 2"));
        let mut b = r.encode();
        b[9] = 1;
        assert!(Request::decode(&b).unwrap_err().0.contains("reserved"));
    }

    #[test]
    fn replies_round_trip_and_cut_long_messages() {
        let mut r = Reply::ok(Op::Ensure);
        assert_eq!(Reply::decode(&r.encode()), Ok(r.clone()));
        r.status = 14;
        r.addr = 0x1000;
        r.message = "é".repeat(200);
        let b = r.encode();
        assert!(b.len() <= REPLY_HEADER_SIZE + MAX_MESSAGE);
        let back = Reply::decode(&b).unwrap();
        assert_eq!((back.status, back.addr), (14, 0x1000));
        assert!(r.message.starts_with(&back.message));
        let mut b = r.encode();
        b[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(Reply::decode(&b).is_err());
        assert!(Reply::decode(&[0; 3]).is_err());
    }

    #[test]
    fn control_headers_round_trip() {
        let c = Control {
            pid: 42,
            socket: b"hobbes-xpmem/42/abc".to_vec(),
        };
        let b = c.encode().unwrap();
        assert!(Control::is_control(&b));
        assert_eq!(Control::decode(&b), Ok(c));
        assert!(Control {
            pid: 1,
            socket: vec![]
        }
        .encode()
        .is_none());
        let mut b2 = b;
        b2[10] = 200;
        assert!(Control::decode(&b2).is_err());
        let mut b3 = b;
        b3[100] = 1;
        assert!(Control::decode(&b3).is_err());
        assert!(Control::decode(&[0; 10]).is_err());
    }
}
