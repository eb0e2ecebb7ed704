//! The VM guest wire (`vm-guest-proto`): arbitrary bytes never crash a
//! reader of either direction, whatever decodes re-encodes to itself, and
//! the guest agent's request handling (`vm_guest_agent::agent::Agent` over a
//! guest that does nothing) answers every request it is fed exactly once,
//! with the request's `seq` or app id.

#![no_main]

use std::fmt::Debug;

use hobbes_proto::frame::{self, HEADER_LEN, MAGIC};
use hobbes_proto::PROTOCOL_VERSION;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vm_guest_agent::agent::testing::{Collector, NullGuest};
use vm_guest_agent::agent::Agent;
use vm_guest_proto::{FromGuest, ToGuest, FILE_CHUNK};

/// Decode `bytes` as a `T` frame; if that works, the message must encode
/// and decode back to itself.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    if let Ok(msg) = frame::decode::<T>(bytes) {
        let again = frame::encode(&msg).expect("a decoded message re-encodes");
        let back: T = frame::decode(&again).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
    }
}

/// The requests a stream of frames carries, skipping malformed ones as the
/// agent's read loop does, up to the first fatal error.
fn requests(mut stream: &[u8]) -> Vec<ToGuest> {
    let mut out = Vec::new();
    loop {
        match frame::read_frame::<_, ToGuest>(&mut stream) {
            Ok(msg) => out.push(msg),
            Err(e) if !e.is_fatal() && !stream.is_empty() => {}
            Err(_) => return out,
        }
    }
}

/// Whether `answer` is the one answer `req` must get.
fn answers(req: &ToGuest, answer: &[FromGuest]) -> bool {
    match (req, answer) {
        (ToGuest::Setup { .. }, [FromGuest::Ready { .. } | FromGuest::SetupFailed { .. }]) => true,
        (ToGuest::Launch(l), [FromGuest::Started { app, .. } | FromGuest::LaunchFailed { app, .. }]) => {
            *app == l.app
        }
        (ToGuest::Signal { seq, .. }, [FromGuest::Done { seq: s, .. }]) => s == seq,
        (ToGuest::Ping { seq }, [FromGuest::Pong { seq: s }]) => s == seq,
        (ToGuest::ReadFile { seq, .. }, [FromGuest::FileData { seq: s, data, .. }]) => {
            s == seq && data.len() <= FILE_CHUNK as usize
        }
        (ToGuest::ReadFile { seq, .. }, [FromGuest::Failed { seq: s, .. }]) => s == seq,
        (ToGuest::WriteFile { seq, .. }, [FromGuest::Done { seq: s, .. }]) => s == seq,
        (ToGuest::Shutdown, []) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // As received: header included.
    check::<ToGuest>(data);
    check::<FromGuest>(data);

    // Behind a valid header, so the payload reaches the JSON decoder.
    let mut framed = Vec::with_capacity(HEADER_LEN + data.len());
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(data);
    check::<ToGuest>(&framed);
    check::<FromGuest>(&framed);

    // The agent's handling of whatever requests the bytes carry, as a
    // stream of frames and as one payload.
    let collector = Collector::new();
    let guest = NullGuest {
        out: collector.out(),
        setups: 0,
        shutdowns: 0,
    };
    let mut agent = Agent::new(guest, collector.out());
    for req in requests(data).into_iter().chain(requests(&framed)) {
        let shown = format!("{req:?}");
        agent.handle(req.clone());
        let answer = collector.take();
        assert!(answers(&req, &answer), "{shown} was answered by {answer:?}");
    }
});
