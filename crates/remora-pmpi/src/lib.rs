//! Where the built libremora libraries are, and which one a program needs.
//!
//! The libraries themselves are C: `build.rs` generates their wrappers from
//! each installed MPI's `mpi.h` (see [`mpiproto`]) and links them with
//! `csrc/`: `libremora.so` for MPICH, `libremora-ompi.so` for Open MPI.
//! This Rust crate tells its users (the Remora launcher, the tests) where
//! they were put and which MPI a program links ([`Mpi::detect`]). See
//! README.md.

#![deny(missing_docs)]

pub mod elf;
pub mod mpiproto;

use std::path::{Path, PathBuf};

/// An MPI implementation libremora has a library for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mpi {
    /// MPICH (`libmpich.so.12`): `libremora.so`.
    Mpich,
    /// Open MPI 4.x (`libmpi.so.40`): `libremora-ompi.so`.
    OpenMpi,
}

impl Mpi {
    /// The soname of this MPI's C library, as programs record it in
    /// `DT_NEEDED`.
    pub fn soname(self) -> &'static str {
        match self {
            Mpi::Mpich => "libmpich.so.12",
            Mpi::OpenMpi => "libmpi.so.40",
        }
    }

    /// Which MPI `program` (an ELF64 LE executable) links directly, from
    /// its `DT_NEEDED` entries (any of [`Mpi::sonames`]): `None` for a program linking neither (not an
    /// MPI program, a static one, or no ELF file at all, e.g. a script); an
    /// error for one linking both, a damaged or non-64-bit-LE ELF file, or a
    /// file that cannot be read. Errors name the file.
    pub fn detect(program: &Path) -> Result<Option<Mpi>, String> {
        let data = std::fs::read(program)
            .map_err(|e| format!("cannot read {}: {e}", program.display()))?;
        Mpi::from_elf(&data).map_err(|e| format!("{}: {e}", program.display()))
    }

    /// Every library of this MPI a program may name in `DT_NEEDED`: a C
    /// program links the C library, a Fortran one (with `--as-needed`) only
    /// its Fortran layer (`use mpi_f08`: `libmpi_usempif08.so.40` alone).
    pub fn sonames(self) -> &'static [&'static str] {
        match self {
            Mpi::Mpich => &["libmpich.so.12", "libmpichfort.so.12", "libmpichcxx.so.12"],
            Mpi::OpenMpi => &[
                "libmpi.so.40",
                "libmpi_mpifh.so.40",
                "libmpi_usempif08.so.40",
                "libmpi_usempi_ignore_tkr.so.40",
                "libmpi_cxx.so.40",
            ],
        }
    }

    /// [`Mpi::detect`] on the bytes of a file.
    pub fn from_elf(data: &[u8]) -> Result<Option<Mpi>, String> {
        if !data.starts_with(b"\x7fELF") {
            return Ok(None);
        }
        let needed = elf::needed(data)?;
        let found: Vec<Mpi> = [Mpi::Mpich, Mpi::OpenMpi]
            .into_iter()
            .filter(|m| needed.iter().any(|n| m.sonames().contains(&n.as_str())))
            .collect();
        match found[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(format!(
                "links both MPICH ({}) and Open MPI ({}); libremora cannot serve it",
                Mpi::Mpich.soname(),
                Mpi::OpenMpi.soname()
            )),
        }
    }
}

/// The path a build-time variable holds, or `None` when empty.
fn built(path: &'static str) -> Option<&'static Path> {
    match path {
        "" => None,
        path => Some(Path::new(path)),
    }
}

/// `$OUT_DIR/libremora.so` of this build (the MPICH library), or `None`
/// when it was built without MPICH (`mpicc.mpich` missing). The same as
/// `library_path_for(Mpi::Mpich)`; kept for existing callers.
pub fn library_path() -> Option<&'static Path> {
    built(env!("REMORA_LIBREMORA"))
}

/// The library for programs of `mpi`: `$OUT_DIR/libremora.so` (MPICH) or
/// `$OUT_DIR/libremora-ompi.so` (Open MPI), or `None` when that MPI was not
/// installed at build time (`mpicc.mpich`, `mpicc.openmpi`).
pub fn library_path_for(mpi: Mpi) -> Option<PathBuf> {
    match mpi {
        Mpi::Mpich => library_path(),
        Mpi::OpenMpi => built(env!("REMORA_LIBREMORA_OMPI")),
    }
    .map(Path::to_path_buf)
}

/// `include/`, holding `remora.h`.
pub fn include_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
}
