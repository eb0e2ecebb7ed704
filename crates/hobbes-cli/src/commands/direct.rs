//! Commands that talk to an enclave's control process directly, on its own
//! socket, the way the original shell used the enclave's command queue:
//! `ping`, `cat`, `write`, `console`. The daemon is only asked where the
//! enclave is.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hobbes_client::{EnclaveConn, Result as ClientResult};
use hobbes_proto::msg::EnclaveRef;

use crate::cli::PingArgs;
use crate::Ctx;

/// Largest file `cat` prints.
const CAT_LIMIT: u64 = 64 << 20;

fn connect(ctx: &Ctx, enclave: &str) -> Result<EnclaveConn> {
    let rec = ctx.connect()?.enclave(EnclaveRef::parse(enclave))?;
    EnclaveConn::to_enclave(&rec)
        .with_context(|| format!("enclave {} ({}) does not answer", rec.id, rec.name))
}

pub fn ping(ctx: &Ctx, args: PingArgs) -> Result<i32> {
    let enclave = EnclaveRef::parse(&args.enclave);
    let mut client = ctx.connect()?;
    let rec = client.enclave(enclave.clone())?;
    // One way or the other, a function that does one round trip.
    let mut once: Box<dyn FnMut() -> ClientResult<Duration>> = if args.via_daemon {
        if !ctx.json {
            println!("PING enclave {} ({}) via leviathan", rec.id, rec.name);
        }
        Box::new(move || client.ping_via_daemon(enclave.clone()))
    } else {
        let mut conn = EnclaveConn::to_enclave(&rec)
            .with_context(|| format!("enclave {} ({}) does not answer", rec.id, rec.name))?;
        if !ctx.json {
            println!(
                "PING enclave {} ({}) at {}",
                rec.id,
                rec.name,
                rec.control.unix_socket_path().unwrap_or_default()
            );
        }
        Box::new(move || conn.ping().map(|(_, rtt)| rtt))
    };

    let mut rtts = Vec::new();
    let mut error = None;
    for seq in 1..=args.count {
        if seq > 1 {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
        match once() {
            Ok(rtt) => {
                if !ctx.json {
                    println!(
                        "reply from enclave {}: seq={seq} time={:.3} ms",
                        rec.id,
                        rtt.as_secs_f64() * 1e3
                    );
                }
                rtts.push(rtt);
            }
            // A broken socket does not heal: stop at the first failure.
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }

    let sent = rtts.len() as u32 + u32::from(error.is_some());
    if ctx.json {
        let us: Vec<u128> = rtts.iter().map(Duration::as_micros).collect();
        ctx.print_json(&serde_json::json!({
            "enclave": rec.id,
            "via_daemon": args.via_daemon,
            "sent": sent,
            "received": rtts.len(),
            "rtt_us": us,
            "error": error.as_ref().map(ToString::to_string),
        }))?;
    } else {
        println!("--- enclave {} ping statistics ---", rec.name);
        println!(
            "{sent} sent, {} received, {:.0}% loss",
            rtts.len(),
            100.0 * f64::from(sent - rtts.len() as u32) / f64::from(sent.max(1))
        );
        if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
            let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
            let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
            println!("rtt min/avg/max = {}/{}/{} ms", ms(*min), ms(avg), ms(*max));
        }
    }
    match error {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}

pub fn cat(ctx: &Ctx, enclave: &str, path: &str) -> Result<i32> {
    let data = connect(ctx, enclave)?.read_file(path, CAT_LIMIT)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&data)?;
    out.flush()?;
    if data.len() as u64 >= CAT_LIMIT {
        eprintln!("hobbes: output cut at {} MiB", CAT_LIMIT >> 20);
    }
    Ok(0)
}

pub fn write(ctx: &Ctx, enclave: &str, path: &str, from: Option<&Path>, mode: u32) -> Result<i32> {
    let data = match from {
        Some(local) => {
            std::fs::read(local).with_context(|| format!("cannot read {}", local.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            buf
        }
    };
    connect(ctx, enclave)?.write_file(path, &data, mode)?;
    if !ctx.json {
        eprintln!("wrote {} bytes to {enclave}:{path}", data.len());
    }
    Ok(0)
}

/// The byte that detaches `hobbes console` (Ctrl-], as telnet and virsh).
pub const DETACH: u8 = 0x1d;

/// `hobbes console`: relay the terminal to the enclave's console until the
/// user types Ctrl-] (or stdin ends, or the console goes away).
pub fn console(ctx: &Ctx, enclave: &str) -> Result<i32> {
    let conn = connect(ctx, enclave)?;
    let stream = conn
        .console()
        .with_context(|| format!("cannot attach to the console of enclave {enclave}"))?;
    eprintln!("attached to the console of enclave {enclave}; detach with Ctrl-]\r");
    let _raw = RawTerminal::enter();
    let mut from_console = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from_console.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
        // The console went away (the enclave ended): end the session too.
        restore_terminal();
        std::process::exit(0);
    });
    let mut to_console = stream;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (data, detach) = match buf[..n].iter().position(|b| *b == DETACH) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        if to_console.write_all(data).is_err() || detach {
            break;
        }
    }
    drop(_raw);
    eprintln!("\ndetached from the console of enclave {enclave}");
    Ok(0)
}

/// Restores the terminal's settings saved when the console attached.
static SAVED_TERMIOS: std::sync::Mutex<Option<nix::sys::termios::Termios>> =
    std::sync::Mutex::new(None);

fn restore_terminal() -> Option<()> {
    let saved = SAVED_TERMIOS.lock().ok()?.take()?;
    nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &saved).ok()
}

/// The terminal in raw mode (keys go to the guest as typed, Ctrl-C too)
/// while it lives; nothing when stdin is not a terminal.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios;
        if let Ok(saved) = termios::tcgetattr(std::io::stdin()) {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            if termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw).is_ok() {
                if let Ok(mut slot) = SAVED_TERMIOS.lock() {
                    *slot = Some(saved);
                }
            }
        }
        RawTerminal
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}
