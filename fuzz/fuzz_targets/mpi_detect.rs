//! `remora_pmpi::Mpi::from_elf` and the ELF dynamic-section reader behind
//! it on arbitrary bytes: errors, never panics or out-of-bounds reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = remora_pmpi::Mpi::from_elf(data);
    let _ = remora_pmpi::elf::defined_dynamic_symbols(data);
});
