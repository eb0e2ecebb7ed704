//! Compiles the PMIx glue (`csrc/pmix_glue.c`) against libpmix when its
//! development files are installed, and sets `cfg(hobbes_pmix)` for the Rust
//! side. Without them nothing C is built, `Server::available()` is false and
//! every call returns `PmixError::Unavailable`; the workspace still builds.
//!
//! Where the headers are: `pkg-config --cflags pmix` when it answers, else
//! Debian 12's `libpmix-dev` path. `HOBBES_PMIX=off` forces the fallback (to
//! check that the crate builds without libpmix).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian 12's libpmix-dev header directory (PMIx 4.2.2, library libpmix.so.2).
const DEBIAN_INCLUDE: &str = "/usr/lib/x86_64-linux-gnu/pmix2/include";

struct Pmix {
    include_dirs: Vec<PathBuf>,
    lib_dirs: Vec<PathBuf>,
}

/// Find libpmix's headers and library directories, or say why not.
fn find_pmix() -> Result<Pmix, String> {
    if std::env::var("HOBBES_PMIX").as_deref() == Ok("off") {
        return Err("HOBBES_PMIX=off".to_string());
    }
    let mut p = Pmix {
        include_dirs: Vec::new(),
        lib_dirs: Vec::new(),
    };
    if let Ok(out) = Command::new("pkg-config")
        .args(["--cflags", "--libs", "pmix"])
        .output()
    {
        if out.status.success() {
            for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Some(dir) = word.strip_prefix("-I") {
                    p.include_dirs.push(PathBuf::from(dir));
                } else if let Some(dir) = word.strip_prefix("-L") {
                    p.lib_dirs.push(PathBuf::from(dir));
                }
            }
        }
    }
    if p.include_dirs.is_empty() {
        p.include_dirs.push(PathBuf::from(DEBIAN_INCLUDE));
    }
    if !p
        .include_dirs
        .iter()
        .any(|d| d.join("pmix_server.h").is_file())
    {
        return Err(format!(
            "no pmix_server.h in {:?} (install libpmix-dev)",
            p.include_dirs
        ));
    }
    Ok(p)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=HOBBES_PMIX");
    println!("cargo::rustc-check-cfg=cfg(hobbes_pmix)");

    let pmix = match find_pmix() {
        Ok(p) => p,
        Err(why) => {
            println!(
                "cargo:warning=hobbes-pmix built without libpmix ({why}): Server::available() is false"
            );
            return;
        }
    };
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    cc::Build::new()
        .file(Path::new(&manifest).join("csrc/pmix_glue.c"))
        .includes(&pmix.include_dirs)
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        // pmix_common.h's own macros compare unsigned values with 0.
        .flag_if_supported("-Wno-type-limits")
        .compile("hobbes_pmix_glue");
    for dir in &pmix.lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=pmix");
    println!("cargo:rustc-cfg=hobbes_pmix");
}
