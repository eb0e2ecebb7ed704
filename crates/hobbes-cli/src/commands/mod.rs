//! One function per command, grouped by what they act on. Each returns the
//! process exit code; errors bubble up to `main` as `error: ...`.

mod app;
mod demo;
mod direct;
mod enclave;
mod insitu;
mod node;

use anyhow::Result;
use hobbes_proto::msg::EnclaveRef;

use crate::cli::{Command, DemoKind};
use crate::Ctx;

/// Run `command` and return the process exit code: 0 on success, the app's own code for
/// the commands that wait for an app (`wait-app`, `launch-app --wait`). `demo insitu` does
/// not return when it can exec `hobbes-insitu`. Commands that need the daemon connect to it
/// themselves; errors (no daemon, refused request, I/O) are returned for `main` to print.
pub fn run(ctx: &Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Status => node::status(ctx, &mut ctx.connect()?),
        Command::ListCpus => node::list_cpus(ctx, &mut ctx.connect()?),
        Command::ListMemory { owner } => node::list_memory(ctx, &mut ctx.connect()?, owner),
        Command::CreateEnclave(args) => enclave::create(ctx, args),
        Command::DestroyEnclave { enclave } => enclave::destroy(ctx, &enclave),
        Command::ListEnclaves => enclave::list(ctx, &mut ctx.connect()?),
        Command::ListSegments => node::list_segments(ctx, &mut ctx.connect()?),
        Command::AssignCpus(args) => enclave::assign_cpus(ctx, args),
        Command::RevokeCpus { enclave, ids } => enclave::revoke_cpus(ctx, &enclave, ids.0),
        Command::AssignMemory(args) => enclave::assign_memory(ctx, args),
        Command::RevokeMemory { enclave, blocks } => {
            enclave::revoke_memory(ctx, &enclave, blocks.0)
        }
        Command::LaunchApp(args) => app::launch(ctx, args),
        Command::ListApps { enclave } => app::list(
            ctx,
            &mut ctx.connect()?,
            enclave.as_deref().map(EnclaveRef::parse),
        ),
        Command::KillApp { app, signal } => app::kill(ctx, app, signal),
        Command::WaitApp { app } => app::wait(ctx, app),
        Command::Ping(args) => direct::ping(ctx, args),
        Command::Cat { enclave, path } => direct::cat(ctx, &enclave, &path),
        Command::Console { enclave } => direct::console(ctx, &enclave),
        Command::Write {
            enclave,
            path,
            from,
            mode,
        } => direct::write(ctx, &enclave, &path, from.as_deref(), mode),
        Command::Demo { what: None } => demo::run(ctx),
        Command::Demo {
            what: Some(DemoKind::Insitu { args }),
        } => insitu::run(ctx, args),
    }
}
