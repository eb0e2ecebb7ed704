//! Enclave descriptions come from users: no XML may crash the parser, and
//! every spec it accepts must pass its own validation and survive the JSON
//! round trip it takes to the daemon.

#![no_main]

use hobbes_proto::spec::EnclaveSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(spec) = EnclaveSpec::from_xml(text) {
        spec.validate().expect("an accepted spec is valid");
        let json = serde_json::to_string(&spec).expect("a spec serializes");
        let back: EnclaveSpec = serde_json::from_str(&json).expect("a spec deserializes");
        assert_eq!(back, spec);
    }
});
