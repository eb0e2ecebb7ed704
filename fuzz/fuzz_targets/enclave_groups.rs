//! `HOBBES_ENCLAVE_GROUPS` comes from the job's environment (set by Remora,
//! or by any user), parsed by the SPANK plugin as root in slurmstepd: no
//! string may crash the parser; what it accepts has valid, unique names,
//! disjoint ranges, enclave names that pass `validate_name`, and prints back
//! to itself.

#![no_main]

use hobbes_proto::slurm::{EnclaveGroups, SlurmStep, MAX_GROUPS};
use hobbes_proto::spec::validate_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(groups) = EnclaveGroups::parse(text) else {
        return;
    };
    assert!(!groups.groups.is_empty() && groups.groups.len() <= MAX_GROUPS);
    let step = SlurmStep {
        job_id: u32::MAX,
        step_id: u32::MAX,
        het_component: Some(u32::MAX),
        node: "n1".into(),
    };
    for (i, a) in groups.groups.iter().enumerate() {
        assert!(a.first <= a.last);
        validate_name(&format!("{}-{}", step.enclave_name(), a.name))
            .expect("an accepted application name gives a valid enclave name");
        assert!(groups.group_of(a.first).is_some_and(|g| g.name == a.name));
        for b in &groups.groups[i + 1..] {
            assert_ne!(a.name, b.name);
            assert!(a.last < b.first || b.last < a.first, "ranges overlap");
        }
    }
    assert_eq!(EnclaveGroups::parse(&groups.to_string()).as_ref(), Ok(&groups));
});
