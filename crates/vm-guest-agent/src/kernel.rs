//! Facts read from the guest kernel (command line, release, uptime) and the
//! loading of the kernel modules the image ships.
//!
//! The parsing is separate from the reading so it can be tested anywhere.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Where the image keeps its kernel modules (`scripts/vm-image.sh`).
pub const MODULES_DIR: &str = "/.hobbes/modules";

/// The file in [`MODULES_DIR`] listing the modules to load, dependencies first.
pub const LOAD_LIST: &str = "load.list";

/// The kernel command-line parameter that turns on the echo mode.
pub const ECHO_PARAM: &str = "hobbes.echo";

/// The value of `key=value` on a kernel command line (`key` alone: `""`).
/// The last occurrence wins, as for the kernel's own parameters.
pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|word| match word.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if word == key => Some(""),
            _ => None,
        })
        .next_back()
}

/// Whether the command line asks for the echo mode (`hobbes.echo=1`).
pub fn echo_mode(cmdline: &str) -> bool {
    cmdline_param(cmdline, ECHO_PARAM) == Some("1")
}

/// Milliseconds since boot from the text of `/proc/uptime` ("12.34 56.78").
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let secs = text.split_whitespace().next()?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
    let whole: u64 = whole.parse().ok()?;
    // /proc/uptime has two decimals; keep up to three, padding on the right.
    let frac_ms: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    Some(whole * 1000 + frac_ms)
}

/// Milliseconds since the guest booted (0 if `/proc` is unreadable).
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| parse_uptime_ms(&t))
        .unwrap_or(0)
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The kernel command line (empty if `/proc` is unreadable).
pub fn cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The module file names of a load list: one per line, blank lines and `#`
/// comments skipped, in order.
pub fn parse_load_list(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Load every module of `dir/load.list` in order. A module already loaded
/// (or built in) is fine; any other failure names the module and is
/// returned after trying the rest, so one odd module does not hide the others.
pub fn load_modules(dir: &Path) -> Result<(), String> {
    let list_path = dir.join(LOAD_LIST);
    let text = std::fs::read_to_string(&list_path)
        .map_err(|e| format!("cannot read the module list {}: {e}", list_path.display()))?;
    let mut errors = Vec::new();
    for name in parse_load_list(&text) {
        let path = dir.join(name);
        if let Err(e) = load_module(&path) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Load one module file with `finit_module(2)`; `EEXIST` (already loaded) is
/// success.
fn load_module(path: &Path) -> Result<(), String> {
    let file =
        File::open(path).map_err(|e| format!("cannot open module {}: {e}", path.display()))?;
    let no_params: &CStr = c"";
    // SAFETY: finit_module reads the module from the open descriptor and the
    // parameter string, a valid NUL-terminated C string that outlives the
    // call; neither is retained after it returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            no_params.as_ptr(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(format!("cannot load module {}: {err}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_mode_needs_exactly_hobbes_echo_1() {
        assert!(echo_mode("console=ttyS0 quiet hobbes.echo=1 panic=-1"));
        assert!(!echo_mode("console=ttyS0 quiet panic=-1"));
        assert!(!echo_mode("hobbes.echo=0"));
        assert!(!echo_mode("xhobbes.echo=1"));
        assert!(!echo_mode("hobbes.echo"));
        assert!(
            echo_mode("hobbes.echo=0 hobbes.echo=1\n"),
            "the last one wins"
        );
    }

    #[test]
    fn cmdline_params_with_and_without_values() {
        let c = "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet";
        assert_eq!(cmdline_param(c, "root"), Some("/dev/vda1"));
        assert_eq!(cmdline_param(c, "ro"), Some(""));
        assert_eq!(cmdline_param(c, "rw"), None);
    }

    #[test]
    fn uptime_is_read_in_milliseconds() {
        assert_eq!(parse_uptime_ms("2.31 1.90\n"), Some(2310));
        assert_eq!(parse_uptime_ms("12345.6 0.00"), Some(12_345_600));
        assert_eq!(parse_uptime_ms("7 0"), Some(7000));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("x.5 1"), None);
    }

    #[test]
    fn load_list_keeps_order_and_skips_comments() {
        let text = "# dependencies first\nvirtio_ring.ko\n\n  virtio.ko \nvirtio_pci.ko\n";
        assert_eq!(
            parse_load_list(text),
            ["virtio_ring.ko", "virtio.ko", "virtio_pci.ko"]
        );
    }

    #[test]
    fn a_missing_module_list_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_modules(dir.path()).unwrap_err();
        assert!(err.contains("load.list"), "{err}");
    }
}
