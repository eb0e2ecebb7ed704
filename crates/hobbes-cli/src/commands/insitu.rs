//! `hobbes demo insitu`: the composed in situ workflow. It lives with the
//! workloads (crates/hobbes-workloads, `hobbes-insitu demo`), so the node
//! shell links none of them: this execs `hobbes-insitu demo` with the flags as
//! given (plus `--socket` and `--json` when given before `demo`), so its
//! output, help and exit status are the demo's own.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Result};

use crate::Ctx;

/// The binary that holds the demo.
const INSITU: &str = "hobbes-insitu";
/// Tells `hobbes-insitu demo` which command line to show in its usage lines
/// (hobbes_workloads::demo::SHOWN_AS_ENV; this crate does not link it).
const SHOWN_AS_ENV: &str = "HOBBES_INSITU_DEMO_AS";

pub fn run(ctx: &Ctx, args: Vec<OsString>) -> Result<i32> {
    let exe = find_insitu()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("demo").arg("--socket").arg(&ctx.socket);
    if ctx.json {
        cmd.arg("--json");
    }
    // After ours: a --socket among them wins.
    cmd.args(args).env(SHOWN_AS_ENV, "hobbes demo insitu");
    // Only returns on failure.
    let err = cmd.exec();
    Err(anyhow!("cannot run {}: {err}", exe.display()))
}

/// `hobbes-insitu` next to this executable (cargo builds both into
/// target/<profile>/), else in PATH.
fn find_insitu() -> Result<PathBuf> {
    hobbes_embedded::find_beside_or_in_path(INSITU).ok_or_else(|| {
        anyhow!(
            "`hobbes demo insitu` runs {INSITU}, which is neither next to hobbes nor in PATH: \
             build it (`cargo build -p hobbes-workloads`, with --release for target/release)"
        )
    })
}
