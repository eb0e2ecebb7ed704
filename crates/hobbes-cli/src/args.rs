//! Parsers for argument values (clap `value_parser`s). Errors are phrased for
//! the user; clap prefixes them with the argument's name.

use std::str::FromStr;

use hobbes_proto::model::EnclaveKind;

/// A list of core or block ids: "3", "1,3", "4-7", "0,2-3".
///
/// A newtype because clap would read a bare `Vec` as a repeated argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdList(pub Vec<u32>);

impl FromStr for IdList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for part in s.split(',').map(str::trim) {
            let num = |t: &str| {
                t.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{t:?} is not an id (expected e.g. 3, 1,3 or 4-7)"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b || b - a >= 4096 {
                        return Err(format!("bad range {part:?}"));
                    }
                    ids.extend(a..=b);
                }
                None => ids.push(num(part)?),
            }
        }
        Ok(IdList(ids))
    }
}

/// A memory size in MiB: "512", "512M", "1G", "2GiB" (shared with the daemon's flags).
pub use hobbes_proto::spec::parse_size_mib;

/// An environment assignment `K=V`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

/// A file mode in octal ("644", "0755").
pub fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode (e.g. 644)")),
    }
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("SYS", libc::SIGSYS),
];

/// A signal by number or name: "9", "KILL", "SIGKILL", "term".
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n} is out of range (1-64)"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("unknown signal {s:?} (use a number or a name like TERM, KILL)"))
}

/// The name of a signal number, for messages.
pub fn signal_name(sig: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, v)| *v == sig)
        .map(|(n, _)| format!("SIG{n}"))
        .unwrap_or_else(|| format!("signal {sig}"))
}

/// `--kind`: a kind an enclave can be created as.
pub fn parse_kind(name: &str) -> Result<EnclaveKind, String> {
    EnclaveKind::from_name(name)
        .filter(|k| *k != EnclaveKind::Host)
        .ok_or_else(|| {
            format!(
                "unknown enclave kind {name:?}: expected {}",
                EnclaveKind::creatable_list("", "")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        assert_eq!(parse_kind("native"), Ok(EnclaveKind::Native));
        assert_eq!(parse_kind("lwk"), Ok(EnclaveKind::Lwk));
        let e = parse_kind("host").unwrap_err();
        assert!(e.contains("expected native, lwk"), "{e}");
        assert!(parse_kind("vm-ish")
            .unwrap_err()
            .contains("unknown enclave kind"));
    }

    #[test]
    fn id_lists() {
        assert_eq!("3".parse::<IdList>().unwrap().0, vec![3]);
        assert_eq!("1,3".parse::<IdList>().unwrap().0, vec![1, 3]);
        assert_eq!("0,2-4".parse::<IdList>().unwrap().0, vec![0, 2, 3, 4]);
        assert!("4-2".parse::<IdList>().is_err());
        assert!("x".parse::<IdList>().is_err());
        assert!("".parse::<IdList>().is_err());
        assert!("0-4000000000".parse::<IdList>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512"), Ok(512));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("1G"), Ok(1024));
        assert_eq!(parse_size_mib("2GiB"), Ok(2048));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("1X").is_err());
        assert!(parse_size_mib("G").is_err());
        assert!(parse_size_mib("99999999999999999999T").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Ok(libc::SIGKILL));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
    }

    #[test]
    fn env_and_mode() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("x").is_err());
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert!(parse_mode("9").is_err());
    }
}
