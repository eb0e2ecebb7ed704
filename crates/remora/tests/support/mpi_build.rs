//! Building the test programs of `tests/c` with an MPI's compiler wrapper:
//! shared by the one-node tests (`support`) and the Slurm tests, which do
//! not use the test daemon and include this file by path.

use std::path::Path;
use std::process::Command;

/// Compile each of `progs` (`tests/c/<prog>.c`) with `mpicc` into
/// `dir/<prefix><prog>`; `compose`, which calls libremora's own API, is
/// linked against `-l<remora_lib>` in `lib_dir` (with an rpath). Panics
/// with the compiler's messages when one fails to build.
pub fn build_mpi_programs(
    mpicc: &str,
    dir: &Path,
    prefix: &str,
    progs: &[&str],
    lib_dir: &Path,
    remora_lib: &str,
) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = manifest.join("tests/c");
    let include = manifest.join("../remora-pmpi/include");
    for prog in progs {
        let mut cc = Command::new(mpicc);
        cc.arg("-O1")
            .arg("-o")
            .arg(dir.join(format!("{prefix}{prog}")))
            .arg(src.join(format!("{prog}.c")));
        if *prog == "compose" {
            cc.arg("-I")
                .arg(&include)
                .arg("-L")
                .arg(lib_dir)
                .arg(format!("-l{remora_lib}"))
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
        }
        let out = cc.output().unwrap_or_else(|e| panic!("{mpicc}: {e}"));
        assert!(
            out.status.success(),
            "compiling {prog} with {mpicc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
