//! An LWK app hands the monitor whatever numbers it likes as system-call
//! arguments. Decoding them (pointers checked against the app's memory,
//! descriptors against its table, lengths bounded) must never panic, and on
//! the proxy's path never block. Records of 56 bytes: number, six arguments.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lwk_vmm::fuzz_calls(data);
});
