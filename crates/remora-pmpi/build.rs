//! Builds libremora.so: generates the communicator-substituting wrappers
//! from the installed MPICH `mpi.h`, compiles them with the hand-written core
//! (csrc/) through the `cc` crate, and links the objects into a shared
//! library against libmpich.
//!
//! Why the link is done here and not by rustc as a `cdylib`: rustc hides
//! every symbol of a cdylib that Rust code does not export itself (it passes
//! the linker a version script), so the C `MPI_*` definitions would not be
//! visible to the dynamic linker and LD_PRELOAD would interpose nothing.
//!
//! Outputs: `$OUT_DIR/libremora.so`, a copy in `<target>/<profile>/` beside
//! the workspace's binaries (what the launcher and people use), and the
//! `REMORA_LIBREMORA` compile-time variable holding the `$OUT_DIR` path
//! (what `remora_pmpi::library_path()` and the tests use). Without MPICH
//! (no `mpicc.mpich`) nothing is built, the variable is empty, and the
//! tests report SKIP; the rest of the workspace still builds.

#[path = "src/mpiproto.rs"]
#[allow(dead_code)]
mod mpiproto;

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MPICH compiler wrapper; `REMORA_MPICC` overrides it.
const DEFAULT_MPICC: &str = "mpicc.mpich";

struct Mpich {
    include_dirs: Vec<PathBuf>,
    lib_dirs: Vec<PathBuf>,
}

/// Ask the MPICH wrapper for its flags (`mpicc.mpich -show`).
fn find_mpich() -> Result<Mpich, String> {
    let mpicc = env::var("REMORA_MPICC").unwrap_or_else(|_| DEFAULT_MPICC.to_string());
    let out = Command::new(&mpicc)
        .arg("-show")
        .output()
        .map_err(|e| format!("cannot run `{mpicc} -show` ({e}); scripts/deps.sh installs mpich"))?;
    if !out.status.success() {
        return Err(format!("`{mpicc} -show` failed: {}", out.status));
    }
    let show = String::from_utf8_lossy(&out.stdout);
    let mut m = Mpich {
        include_dirs: Vec::new(),
        lib_dirs: Vec::new(),
    };
    for word in show.split_whitespace() {
        if let Some(dir) = word.strip_prefix("-I") {
            m.include_dirs.push(PathBuf::from(dir));
        } else if let Some(dir) = word.strip_prefix("-L") {
            m.lib_dirs.push(PathBuf::from(dir));
        }
    }
    Ok(m)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/mpiproto.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-env-changed=REMORA_MPICC");

    let mpich = match find_mpich() {
        Ok(m) => m,
        Err(why) => {
            println!("cargo:warning=libremora.so not built: {why}");
            println!("cargo:rustc-env=REMORA_LIBREMORA=");
            return;
        }
    };
    let Some(mpi_h) = mpich
        .include_dirs
        .iter()
        .map(|d| d.join("mpi.h"))
        .find(|p| p.is_file())
    else {
        println!("cargo:warning=libremora.so not built: no mpi.h in the -I dirs of mpicc.mpich");
        println!("cargo:rustc-env=REMORA_LIBREMORA=");
        return;
    };

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wrappers_c = out_dir.join("remora_wrappers.c");
    generate_wrappers(&mpi_h, &wrappers_c);

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut build = cc::Build::new();
    build
        .file(manifest.join("csrc/remora_core.c"))
        .file(&wrappers_c)
        .include(manifest.join("csrc"))
        .include(manifest.join("include"))
        .includes(&mpich.include_dirs)
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        // Only the .so links these objects; the Rust rlib (and so the test
        // binaries) must not define MPI_Init & co.
        .cargo_metadata(false);
    build.compile("remora_c");

    let so = out_dir.join("libremora.so");
    link_shared(&build, &out_dir.join("libremora_c.a"), &mpich.lib_dirs, &so);
    uplift(&out_dir, &so);
    println!("cargo:rustc-env=REMORA_LIBREMORA={}", so.display());
}

/// Parse `mpi.h` (and the headers it includes from its directory) and write
/// the wrappers' C source.
fn generate_wrappers(mpi_h: &Path, dest: &Path) {
    let files = mpiproto::header_closure(mpi_h)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", mpi_h.display()));
    let mut protos = Vec::new();
    for (path, text) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        protos.extend(mpiproto::parse_prototypes(text));
    }
    let wrappers = mpiproto::wrappable(&protos);
    assert!(
        wrappers.iter().any(|p| p.name == "MPI_Send"),
        "parsed no MPI_Send wrapper from {}: the header format changed",
        mpi_h.display()
    );
    let c = mpiproto::generate_c(&wrappers, &mpi_h.display().to_string());
    std::fs::write(dest, c).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

/// Link the static archive of C objects into libremora.so with the same
/// compiler `cc` used, against libmpich (so PMPI_* resolve there).
fn link_shared(build: &cc::Build, archive: &Path, lib_dirs: &[PathBuf], so: &Path) {
    let mut cmd = build.get_compiler().to_command();
    cmd.arg("-shared")
        .arg("-o")
        .arg(so)
        .arg("-Wl,-soname,libremora.so")
        .arg("-Wl,--whole-archive")
        .arg(archive)
        .arg("-Wl,--no-whole-archive")
        // Catch an unresolved symbol now rather than at preload time.
        .arg("-Wl,--no-undefined");
    for dir in lib_dirs {
        cmd.arg(format!("-L{}", dir.display()));
    }
    cmd.arg("-lmpich");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the linker {cmd:?}: {e}"));
    assert!(status.success(), "linking libremora.so failed: {cmd:?}");
}

/// Copy the library to `<target>/<profile>/libremora.so`, next to the
/// workspace's binaries, where the launcher and people look for it.
/// `OUT_DIR` is `<target>/<profile>/build/remora-pmpi-HASH/out`. Best
/// effort: the `$OUT_DIR` copy is the one the tests use.
fn uplift(out_dir: &Path, so: &Path) {
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let dest = profile_dir.join("libremora.so");
    // Replace, never write through: a running job may have the old file mapped.
    let tmp = profile_dir.join(".libremora.so.tmp");
    if std::fs::copy(so, &tmp).is_ok() && std::fs::rename(&tmp, &dest).is_err() {
        let _ = std::fs::remove_file(&tmp);
        println!(
            "cargo:warning=could not copy libremora.so to {}",
            dest.display()
        );
    }
}
