//! `hobbes`, the Hobbes node shell: the command table ([`cli`]) and one
//! module per group of commands ([`commands`]). The binary only parses the
//! command line, calls [`run`], and turns errors into `error: ...` + exit 1.

#![deny(missing_docs)]

pub mod args;
pub mod cli;
pub mod commands;
mod human;
mod table;

use std::path::PathBuf;

use anyhow::Result;
use hobbes_client::Client;
use serde::Serialize;

pub use cli::{Cli, Command};

/// What every command needs: where the daemon is and how to print.
pub struct Ctx {
    /// leviathan's client socket: `--socket`, else `$HOBBES_SOCKET`, else
    /// `<state dir>/leviathan.sock`.
    pub socket: PathBuf,
    /// `--json`: print records as pretty JSON instead of tables.
    pub json: bool,
}

impl Ctx {
    /// The context for `cli`'s global flags (resolves the default socket path; connects to
    /// nothing).
    pub fn new(cli: &Cli) -> Self {
        Ctx {
            socket: cli
                .socket
                .clone()
                .unwrap_or_else(hobbes_client::paths::socket),
            json: cli.json,
        }
    }

    /// A new connection to the daemon at [`Ctx::socket`].
    ///
    /// # Errors
    ///
    /// When nothing listens there or this user may not open it.
    pub fn connect(&self) -> Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }

    fn print_json(&self, value: &impl Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Run one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let ctx = Ctx::new(&cli);
    commands::run(&ctx, cli.command)
}
