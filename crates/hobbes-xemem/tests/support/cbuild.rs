//! Building the C tests: find the C library built beside the test binary
//! and compile a test program against its header.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use super::daemon::profile_dir;

/// The directory holding `lib<name>.so`. Building a test builds its
/// package's library with all crate types into `deps/`, beside the test,
/// matching the sources the test was built from; `<profile>/` has what
/// `cargo build` leaves. If neither has it, build it.
pub fn lib_dir(name: &str, package: &str, manifest_dir: &str) -> PathBuf {
    let file = format!("lib{name}.so");
    let dir = profile_dir();
    let deps = dir.join("deps");
    if deps.join(&file).exists() {
        return deps;
    }
    if !dir.join(&file).exists() {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let target = dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--lib", "--profile", &profile])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(manifest_dir)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    dir
}

/// Compile `src` against `include` and link it with `-l<lib>` from `lib_dir`.
pub fn compile(src: &Path, include: &Path, lib_dir: &Path, lib: &str) -> PathBuf {
    let stem = src.file_stem().and_then(|s| s.to_str()).unwrap_or("c_test");
    let out = lib_dir.join(format!("{stem}_bin"));
    let result = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(include)
        .arg(src)
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(lib_dir)
        .arg(format!("-l{lib}"))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .expect("run the C compiler (cc)");
    assert!(
        result.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// Build package `package`'s C library `lib` and compile its test program
/// `tests/c/<program>` against its `include/`: (the program, the library's
/// directory).
pub fn c_test_program(
    lib: &str,
    package: &str,
    manifest_dir: &str,
    program: &str,
) -> (PathBuf, PathBuf) {
    let lib_dir = lib_dir(lib, package, manifest_dir);
    let manifest = Path::new(manifest_dir);
    let bin = compile(
        &manifest.join("tests/c").join(program),
        &manifest.join("include"),
        &lib_dir,
        lib,
    );
    (bin, lib_dir)
}

/// The value of the `key=value` line the C test printed.
pub fn get<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}
