//! The whole-address-space XPMEM wire (hobbes_proto::xpmem_as): requests
//! come from any process that can reach the owner's socket, replies and the
//! control header from whoever the attacher connected to. No bytes may
//! crash a decoder, and whatever decodes re-encodes to the same message.

#![no_main]

use hobbes_proto::xpmem_as::{Control, Op, Reply, Request, REPLY_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = Request::decode(bytes) {
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        match r.op {
            Op::Hello => assert_eq!((r.vaddr, r.len), (0, 0)),
            Op::Ensure => assert!(r.len > 0 && r.vaddr.checked_add(r.len).is_some()),
        }
    }
    if let Ok(r) = Reply::decode(bytes) {
        assert!(r.status >= 0);
        let again = r.encode();
        assert_eq!(again.len(), bytes.len().max(REPLY_HEADER_SIZE));
        assert_eq!(Reply::decode(&again), Ok(r));
    }
    if let Ok(c) = Control::decode(bytes) {
        let again = c.encode().expect("a decoded header re-encodes");
        assert_eq!(Control::decode(&again), Ok(c));
    }
});
