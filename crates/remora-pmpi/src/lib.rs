//! Where the built `libremora.so` is.
//!
//! The library itself is C: `build.rs` generates its wrappers from MPICH's
//! `mpi.h` (see [`mpiproto`]) and links them with `csrc/remora_core.c`. This
//! Rust crate only tells its users (the Remora launcher, the tests) where that
//! library was put. See README.md.

#![deny(missing_docs)]

pub mod mpiproto;

use std::path::Path;

/// `$OUT_DIR/libremora.so` of this build, or `None` when it was built
/// without MPICH (`mpicc.mpich` missing), in which case no library exists.
pub fn library_path() -> Option<&'static Path> {
    match env!("REMORA_LIBREMORA") {
        "" => None,
        path => Some(Path::new(path)),
    }
}

/// `include/`, holding `remora.h`.
pub fn include_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/include"))
}
