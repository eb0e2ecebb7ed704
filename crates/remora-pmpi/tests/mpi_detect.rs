//! `Mpi::detect` on real programs compiled here: MPICH, Open MPI, plain C,
//! and one linking both MPIs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, skip};
use remora_pmpi::Mpi;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Compile tests/c/hello.c (or a plain C program for `cc`) with `compiler`
/// and `extra`; `None` after a SKIP line when the compiler is missing.
fn build(test: &str, dir: &Path, compiler: &str, extra: &[&str], mpi: bool) -> Option<PathBuf> {
    if Command::new(compiler).arg("--version").output().is_err() {
        skip(&format!("SKIP {test}: no {compiler}"));
        return None;
    }
    let src = if mpi {
        Path::new(MANIFEST_DIR).join("tests/c/hello.c")
    } else {
        let s = dir.join("plain.c");
        std::fs::write(&s, "int main(void) { return 0; }\n").expect("write plain.c");
        s
    };
    let exe = dir.join(format!("{compiler}.exe"));
    let mut cmd = Command::new(compiler);
    cmd.arg("-o").arg(&exe).arg(&src).args(extra);
    let o = run(cmd, compiler);
    assert_eq!(o.code, Some(0), "{compiler}: {}{}", o.stdout, o.stderr);
    Some(exe)
}

#[test]
fn an_mpich_program_is_detected_as_mpich() {
    let dir = tempfile::tempdir().unwrap();
    let test = "an_mpich_program_is_detected_as_mpich";
    if let Some(exe) = build(test, dir.path(), "mpicc.mpich", &[], true) {
        assert_eq!(Mpi::detect(&exe), Ok(Some(Mpi::Mpich)));
    }
}

#[test]
fn an_open_mpi_program_is_detected_as_open_mpi() {
    let dir = tempfile::tempdir().unwrap();
    let test = "an_open_mpi_program_is_detected_as_open_mpi";
    if let Some(exe) = build(test, dir.path(), "mpicc.openmpi", &[], true) {
        assert_eq!(Mpi::detect(&exe), Ok(Some(Mpi::OpenMpi)));
    }
}

/// A `use mpi_f08` program links only its MPI's Fortran layer
/// (`libmpi_usempif08.so.40`, `libmpichfort.so.12`): still detected.
#[test]
fn f08_programs_are_detected_by_their_fortran_layer() {
    let test = "f08_programs_are_detected_by_their_fortran_layer";
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("world.f90");
    std::fs::write(
        &src,
        "program w\n  use mpi_f08\n  call MPI_Init()\n  call MPI_Finalize()\nend program w\n",
    )
    .unwrap();
    for (compiler, mpi) in [
        ("mpif90.mpich", Mpi::Mpich),
        ("mpif90.openmpi", Mpi::OpenMpi),
    ] {
        if Command::new(compiler).arg("--version").output().is_err() {
            skip(&format!("SKIP {test}: no {compiler}"));
            continue;
        }
        let exe = dir.path().join(format!("{compiler}.exe"));
        let mut cmd = Command::new(compiler);
        cmd.arg("-o").arg(&exe).arg(&src);
        let o = run(cmd, compiler);
        assert_eq!(o.code, Some(0), "{compiler}: {}{}", o.stdout, o.stderr);
        assert_eq!(Mpi::detect(&exe), Ok(Some(mpi)), "{compiler}");
    }
}

#[test]
fn a_plain_c_program_links_no_mpi() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(exe) = build(
        "a_plain_c_program_links_no_mpi",
        dir.path(),
        "cc",
        &[],
        false,
    ) {
        assert_eq!(Mpi::detect(&exe), Ok(None));
    }
}

#[test]
fn a_program_linking_both_mpis_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_program_linking_both_mpis_is_an_error_naming_both";
    // MPICH's headers, both libraries recorded as needed.
    let extra = [
        "-Wl,--no-as-needed",
        "-L/usr/lib/x86_64-linux-gnu/openmpi/lib",
        "-lmpi",
    ];
    if Command::new("mpicc.openmpi")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(&format!("SKIP {test}: no Open MPI (mpicc.openmpi)"));
        return;
    }
    if let Some(exe) = build(test, dir.path(), "mpicc.mpich", &extra, true) {
        let err = Mpi::detect(&exe).unwrap_err();
        assert!(
            err.contains("libmpich.so.12") && err.contains("libmpi.so.40"),
            "{err}"
        );
    }
}

#[test]
fn a_missing_or_damaged_file_is_an_error_naming_it_and_a_script_links_no_mpi() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    assert!(Mpi::detect(&absent)
        .unwrap_err()
        .contains(&absent.display().to_string()));
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    assert_eq!(Mpi::detect(&script), Ok(None));
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, b"\x7fELF\x02\x01").unwrap();
    assert!(Mpi::detect(&truncated)
        .unwrap_err()
        .contains("outside the file"));
}
