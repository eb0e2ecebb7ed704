//! Builds libremora.so (MPICH) and libremora-ompi.so (Open MPI): for each
//! installed MPI, generates the communicator-substituting wrappers from its
//! `mpi.h` (and, for MPICH, the `use mpi_f08` wrappers from the symbols of
//! libmpichfort), compiles them with the hand-written core (csrc/) through
//! the `cc` crate, and links the objects into a shared library against the
//! MPI's C library.
//!
//! Why the link is done here and not by rustc as a `cdylib`: rustc hides
//! every symbol of a cdylib that Rust code does not export itself (it passes
//! the linker a version script), so the C `MPI_*` definitions would not be
//! visible to the dynamic linker and LD_PRELOAD would interpose nothing.
//!
//! Outputs per library: `$OUT_DIR/<lib>`, a copy in `<target>/<profile>/`
//! beside the workspace's binaries (what the launcher and people use), and a
//! compile-time variable holding the `$OUT_DIR` path (`REMORA_LIBREMORA`,
//! `REMORA_LIBREMORA_OMPI`: what `remora_pmpi::library_path_for()` and the
//! tests use). Without an MPI (no `mpicc.mpich` / `mpicc.openmpi`) its
//! library is not built, its variable is empty, and its tests report SKIP;
//! the rest of the workspace still builds.

#[path = "src/mpiproto.rs"]
#[allow(dead_code)]
mod mpiproto;

#[path = "src/elf.rs"]
#[allow(dead_code)]
mod elf;

use std::collections::BTreeSet;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One library to build, for one MPI.
struct Target {
    /// The library's file name (and soname).
    lib: &'static str,
    /// The MPI's compiler wrapper, and the variable that overrides it.
    mpicc: &'static str,
    mpicc_env: &'static str,
    /// The wrapper's invocations that print its flags.
    show: &'static [&'static str],
    dialect: mpiproto::Dialect,
    /// Predefined for the C sources.
    defines: &'static [(&'static str, &'static str)],
    /// The hand-written Fortran part (csrc/).
    fortran_c: &'static str,
    /// The MPI's C library (`-l`).
    link: &'static str,
    /// The library whose `mpi_f08` entry points get generated wrappers.
    f08_library: Option<&'static str>,
    /// The compile-time variable that tells `remora_pmpi` the path.
    rustc_env: &'static str,
}

const TARGETS: &[Target] = &[
    Target {
        lib: "libremora.so",
        mpicc: "mpicc.mpich",
        mpicc_env: "REMORA_MPICC",
        show: &["-show"],
        dialect: mpiproto::MPICH,
        defines: &[],
        fortran_c: "csrc/remora_fortran_mpich.c",
        link: "mpich",
        f08_library: Some("libmpichfort.so"),
        rustc_env: "REMORA_LIBREMORA",
    },
    Target {
        lib: "libremora-ompi.so",
        mpicc: "mpicc.openmpi",
        mpicc_env: "REMORA_MPICC_OMPI",
        show: &["-showme:compile", "-showme:link"],
        dialect: mpiproto::OPEN_MPI,
        // Declare the MPI-1 functions Open MPI removed from mpi.h but still
        // exports (MPI_Errhandler_set, ...): they are wrapped too, and the
        // compiler must see every declaration it checks a wrapper against.
        defines: &[("OMPI_OMIT_MPI1_COMPAT_DECLS", "0")],
        fortran_c: "csrc/remora_fortran_ompi.c",
        link: "mpi",
        // Open MPI's Fortran bindings all convert handles through
        // PMPI_Comm_f2c, which csrc/remora_fortran_ompi.c interposes.
        f08_library: None,
        rustc_env: "REMORA_LIBREMORA_OMPI",
    },
];

/// The include and library directories an MPI's compiler wrapper uses.
struct Flags {
    include_dirs: Vec<PathBuf>,
    lib_dirs: Vec<PathBuf>,
}

/// Ask the compiler wrapper for its flags (`mpicc.mpich -show`,
/// `mpicc.openmpi -showme:compile`, `-showme:link`).
fn find_mpi(t: &Target) -> Result<Flags, String> {
    let mpicc = env::var(t.mpicc_env).unwrap_or_else(|_| t.mpicc.to_string());
    let mut flags = Flags {
        include_dirs: Vec::new(),
        lib_dirs: Vec::new(),
    };
    for arg in t.show {
        let out = Command::new(&mpicc).arg(arg).output().map_err(|e| {
            format!("cannot run `{mpicc} {arg}` ({e}); scripts/deps.sh installs the MPIs")
        })?;
        if !out.status.success() {
            return Err(format!("`{mpicc} {arg}` failed: {}", out.status));
        }
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(dir) = word.strip_prefix("-I") {
                flags.include_dirs.push(PathBuf::from(dir));
            } else if let Some(dir) = word.strip_prefix("-L") {
                flags.lib_dirs.push(PathBuf::from(dir));
            }
        }
    }
    Ok(flags)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/mpiproto.rs");
    println!("cargo:rerun-if-changed=src/elf.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=include");
    for t in TARGETS {
        println!("cargo:rerun-if-env-changed={}", t.mpicc_env);
        match build_target(t) {
            Ok(so) => println!("cargo:rustc-env={}={}", t.rustc_env, so.display()),
            Err(why) => {
                println!("cargo:warning={} not built: {why}", t.lib);
                println!("cargo:rustc-env={}=", t.rustc_env);
            }
        }
    }
}

/// Generate, compile and link one library; its `$OUT_DIR` path. An
/// absent MPI is an `Err` (the library is skipped); a header the parser
/// or the compiler rejects panics (the build fails).
fn build_target(t: &Target) -> Result<PathBuf, String> {
    let flags = find_mpi(t)?;
    let Some(mpi_h) = flags
        .include_dirs
        .iter()
        .map(|d| d.join("mpi.h"))
        .find(|p| p.is_file())
    else {
        return Err(format!("no mpi.h in the -I dirs of {}", t.mpicc));
    };

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let stem = t.lib.trim_start_matches("lib").trim_end_matches(".so");
    let work = out_dir.join(stem);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let protos = parse_header(&mpi_h, &t.dialect);
    let wrapped = mpiproto::wrappable(&protos);
    assert!(
        wrapped.iter().any(|p| p.name == "MPI_Send"),
        "parsed no MPI_Send wrapper from {}: the header format changed",
        mpi_h.display()
    );
    let source = mpi_h.display().to_string();
    let wrappers_c = work.join("remora_wrappers.c");
    write(&wrappers_c, &mpiproto::generate_c(&wrapped, &source));

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut build = cc::Build::new();
    build
        .file(manifest.join("csrc/remora_core.c"))
        .file(manifest.join(t.fortran_c))
        .file(&wrappers_c)
        .include(manifest.join("csrc"))
        .include(manifest.join("include"))
        .includes(&flags.include_dirs)
        .pic(true)
        .warnings(true)
        .extra_warnings(true)
        .out_dir(&work)
        // Only the .so links these objects; the Rust rlib (and so the test
        // binaries) must not define MPI_Init & co.
        .cargo_metadata(false);
    for (name, value) in t.defines {
        build.define(name, *value);
    }
    if let Some(f08) = t.f08_library {
        match f08_source(f08, &flags.lib_dirs, &wrapped, &protos, &source) {
            Ok(c) => {
                let f08_c = work.join("remora_f08_wrappers.c");
                write(&f08_c, &c);
                build.file(&f08_c);
            }
            Err(why) => println!("cargo:warning={}: no mpi_f08 wrappers: {why}", t.lib),
        }
    }
    let archive = format!("{}_c", stem.replace('-', "_"));
    build.compile(&archive);

    let so = out_dir.join(t.lib);
    link_shared(
        &build,
        &work.join(format!("lib{archive}.a")),
        &flags.lib_dirs,
        t.link,
        &so,
    );
    uplift(&out_dir, &so);
    Ok(so)
}

/// Every prototype of `mpi_h` and the headers it includes from its
/// directory.
fn parse_header(mpi_h: &Path, dialect: &mpiproto::Dialect) -> Vec<mpiproto::Proto> {
    let files = mpiproto::header_closure(mpi_h)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", mpi_h.display()));
    let mut protos = Vec::new();
    for (path, text) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        protos.extend(
            mpiproto::parse_prototypes(text, dialect)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        );
    }
    protos
}

/// The f08 wrappers' C source, from the symbols `library` (found in
/// `lib_dirs`) exports.
fn f08_source(
    library: &str,
    lib_dirs: &[PathBuf],
    wrapped: &[mpiproto::Proto],
    protos: &[mpiproto::Proto],
    source: &str,
) -> Result<String, String> {
    let path = lib_dirs
        .iter()
        .map(|d| d.join(library))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {library} in the -L dirs"))?;
    println!("cargo:rerun-if-changed={}", path.display());
    let data = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let exported: BTreeSet<String> = elf::defined_dynamic_symbols(&data)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .collect();
    let f08 = mpiproto::f08_wrappers(wrapped, protos, &exported);
    assert!(
        f08.iter().any(|w| w.symbol == "mpi_send_f08ts_"),
        "found no mpi_send_f08ts_ in {}: its naming changed",
        path.display()
    );
    Ok(mpiproto::generate_f08_c(
        &f08,
        &format!("{source} and {}", path.display()),
    ))
}

fn write(dest: &Path, text: &str) {
    std::fs::write(dest, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

/// Link the static archive of C objects into the library with the same
/// compiler `cc` used, against the MPI's C library (so PMPI_* resolve
/// there; the Fortran twins are looked up at run time).
fn link_shared(build: &cc::Build, archive: &Path, lib_dirs: &[PathBuf], mpi: &str, so: &Path) {
    let name = so.file_name().expect("library name").to_string_lossy();
    let mut cmd = build.get_compiler().to_command();
    cmd.arg("-shared")
        .arg("-o")
        .arg(so)
        .arg(format!("-Wl,-soname,{name}"))
        .arg("-Wl,--whole-archive")
        .arg(archive)
        .arg("-Wl,--no-whole-archive")
        // Catch an unresolved symbol now rather than at preload time.
        .arg("-Wl,--no-undefined");
    for dir in lib_dirs {
        cmd.arg(format!("-L{}", dir.display()));
    }
    cmd.arg(format!("-l{mpi}"));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the linker {cmd:?}: {e}"));
    assert!(status.success(), "linking {name} failed: {cmd:?}");
}

/// Copy the library to `<target>/<profile>/`, next to the workspace's
/// binaries, where the launcher and people look for it.
/// `OUT_DIR` is `<target>/<profile>/build/remora-pmpi-HASH/out`. Best
/// effort: the `$OUT_DIR` copy is the one the tests use.
fn uplift(out_dir: &Path, so: &Path) {
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let name = so.file_name().expect("library name").to_string_lossy();
    let dest = profile_dir.join(&*name);
    // Replace, never write through: a running job may have the old file mapped.
    let tmp = profile_dir.join(format!(".{name}.tmp"));
    if std::fs::copy(so, &tmp).is_ok() && std::fs::rename(&tmp, &dest).is_err() {
        let _ = std::fs::remove_file(&tmp);
        println!("cargo:warning=could not copy {name} to {}", dest.display());
    }
}
