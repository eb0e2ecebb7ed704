use clap::Parser;

fn main() {
    // Rust ignores SIGPIPE, which turns `hobbes list-cpus | head` into a
    // panic; end quietly instead, as Unix tools do.
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match hobbes_cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version go to stdout with status 0; usage errors are
        // errors like any other: status 1.
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match hobbes_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", message(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes, skipping causes the message already quotes
/// (client errors embed their source in their own text).
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg = format!("{msg}: {cause}");
        }
    }
    msg
}
