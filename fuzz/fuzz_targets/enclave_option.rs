//! `--enclave=SPEC` comes from users (srun's command line, parsed by the
//! SPANK plugin as root in slurmstepd): no string may crash the parser, and
//! what it accepts stays within its limits and yields a valid enclave spec.

#![no_main]

use hobbes_proto::slurm::{EnclaveOption, SlurmStep, MAX_CORES, MAX_MEM_MIB};
use hobbes_proto::spec::{CpuRequest, EnclaveSpec, MemRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(opt) = EnclaveOption::parse(Some(text)) else {
        return;
    };
    assert!(opt.cores.is_none_or(|c| (1..=MAX_CORES).contains(&c)));
    assert!(opt.mem_mib.is_none_or(|m| (1..=MAX_MEM_MIB).contains(&m)));
    if opt.check_joinable().is_err() {
        return;
    }
    let step = SlurmStep {
        job_id: 1,
        step_id: 0,
        het_component: None,
        node: "n1".into(),
    };
    let spec = EnclaveSpec {
        name: step.enclave_name(),
        kind: opt.kind(),
        shared: opt.shared.unwrap_or(false),
        host_ipc: opt.host_ipc,
        cpus: CpuRequest {
            count: opt.cores.unwrap_or(1),
            ..Default::default()
        },
        memory: MemRequest {
            size_mib: opt.mem_mib.unwrap_or(256),
            ..Default::default()
        },
        vm: None,
    };
    spec.validate()
        .expect("an accepted --enclave gives a valid spec");
});
