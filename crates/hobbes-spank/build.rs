//! Compiles the SPANK shim (`csrc/hobbes_spank.c`: the `--enclave` option
//! and the hooks' bodies) against Slurm's `spank.h` (Debian's
//! `libslurm-dev`), reads the Slurm version the plugin must declare, and
//! sets `cfg(hobbes_spank_shim)` for the Rust side, which defines the
//! symbols Slurm looks up (a Rust cdylib exports its own symbols only).
//! Slurm's functions are weak references in the shim, defined by
//! slurmstepd and srun when they load the plugin, so the unit tests link.
//!
//! Without `spank.h` (or with `SLURM_INCLUDE` naming a directory without
//! it) the crate builds without the shim and a warning says so: the library
//! then is no plugin.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(hobbes_spank_shim)");
    let include = std::env::var_os("SLURM_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    if !include.join("slurm/spank.h").is_file() {
        println!(
            "cargo:warning=hobbes-spank built without its SPANK shim: no slurm/spank.h under {} (install libslurm-dev)",
            include.display()
        );
        return;
    }
    let version_h = include.join("slurm/slurm_version.h");
    let version = std::fs::read_to_string(&version_h).ok().and_then(|text| {
        text.lines().find_map(|l| {
            let hex = l
                .strip_prefix("#define SLURM_VERSION_NUMBER")?
                .trim()
                .strip_prefix("0x")?;
            u32::from_str_radix(hex, 16).ok()
        })
    });
    let Some(version) = version else {
        println!(
            "cargo:warning=hobbes-spank built without its SPANK shim: no SLURM_VERSION_NUMBER in {}",
            version_h.display()
        );
        return;
    };
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    cc::Build::new()
        .file(manifest.join("csrc/hobbes_spank.c"))
        .include(&include)
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("hobbes_spank_shim");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(
        out.join("slurm_version.rs"),
        format!("/// `SLURM_VERSION_NUMBER` of the spank.h built against.\npub const SLURM_VERSION_NUMBER: u32 = {version:#x};\n"),
    )
    .expect("write slurm_version.rs");
    println!("cargo:rustc-cfg=hobbes_spank_shim");
}
