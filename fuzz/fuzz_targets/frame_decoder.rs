//! Arbitrary bytes from a peer must never crash a reader of the Hobbes
//! protocol, and whatever decodes must survive a re-encode unchanged.

#![no_main]

use std::fmt::Debug;
use std::io::{self, Read};

use hobbes_proto::control::{ControlDown, ControlUp, EnclaveRequest, EnclaveResponse};
use hobbes_proto::frame::{self, HEADER_LEN, MAGIC};
use hobbes_proto::msg::{Request, Response};
use hobbes_proto::PROTOCOL_VERSION;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decode `bytes` as a `T` frame; if that works, the message must encode
/// and decode back to itself.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    if let Ok(msg) = frame::decode::<T>(bytes) {
        let again = frame::encode(&msg).expect("a decoded message re-encodes");
        let back: T = frame::decode(&again).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
    }
}

fn check_all(bytes: &[u8]) {
    check::<Request>(bytes);
    check::<Response>(bytes);
    check::<ControlUp>(bytes);
    check::<ControlDown>(bytes);
    check::<EnclaveRequest>(bytes);
    check::<EnclaveResponse>(bytes);
}

/// A stream that hands out one byte per read, with an interruption now and
/// then, as a slow socket would.
struct Trickle<'a> {
    data: &'a [u8],
    reads: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads % 3 == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.data.len()).min(1);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    // As received: header included (mostly rejected early, which is the point).
    check_all(data);

    // Behind a valid header, so the payload reaches the JSON decoder.
    let mut framed = Vec::with_capacity(HEADER_LEN + data.len());
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(data);
    check_all(&framed);

    // Streaming reads agree with in-memory decoding, however the bytes arrive.
    let whole = frame::read_payload(&mut &data[..]);
    let trickled = frame::read_payload(&mut Trickle { data, reads: 0 });
    assert_eq!(whole.as_ref().ok(), trickled.as_ref().ok());
    // The daemon's socket reader (descriptors, deadlines) agrees too.
    let socketed = through_socket(data);
    assert_eq!(whole.as_ref().ok(), socketed.as_ref().ok());
    if let Ok(payload) = whole {
        let _ = frame::decode_payload::<Request>(&payload);
    }
});

/// `data` read by `fdpass::read_payload_with_fds_limited` from a socket pair
/// whose writer sent it all and hung up.
fn through_socket(data: &[u8]) -> Result<Vec<u8>, frame::FrameError> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    a.write_all(data).expect("fits the socket buffer");
    drop(a);
    let limits = hobbes_proto::fdpass::ReadLimits {
        idle: Some(std::time::Duration::from_secs(1)),
        frame: Some(std::time::Duration::from_secs(1)),
    };
    let (payload, fds) = hobbes_proto::fdpass::read_payload_with_fds_limited(&b, limits)?;
    assert!(fds.is_empty());
    Ok(payload)
}
