//! `hobbes`, the Hobbes node shell: the command table ([`cli`]) and one
//! module per group of commands ([`commands`]). The binary only parses the
//! command line, calls [`run`], and turns errors into `error: ...` + exit 1.

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
    pub socket: PathBuf,
    pub json: bool,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Self {
        Ctx {
            socket: cli
                .socket
                .clone()
                .unwrap_or_else(hobbes_client::paths::socket),
            json: cli.json,
        }
    }

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
