//! The control port: finding the virtio-serial port by name, the one framed
//! writer every thread shares, and the echo mode.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hobbes_proto::frame;
use vm_guest_proto::FromGuest;

use crate::agent::Outbox;

/// Where the kernel lists virtio-serial ports (`<dir>/vportNpM/name`).
pub const SYS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The device of the port named `name` under a `/sys/class/virtio-ports`-like
/// `dir`: `/dev/<entry>` for the entry whose `name` file holds `name`.
pub fn find_port(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    // Deterministic when (wrongly) two ports share a name: the first by name.
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end_matches('\n') == name)
            .then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// Wait up to `timeout` for the port named `name` to appear and its device
/// node to exist, and open it for reading and writing.
///
/// The kernel registers the port some time after `virtio_console` is loaded
/// and devtmpfs makes the node after that; there is no event to wait on
/// without udev, so this looks every 10 ms.
pub fn open_port(name: &str, timeout: Duration) -> Result<(PathBuf, File), String> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_port(Path::new(SYS_VIRTIO_PORTS), name) {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
            {
                Ok(file) => return Ok((dev, file)),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(format!(
                        "cannot open the control port {}: {e}",
                        dev.display()
                    ))
                }
                Err(_) => {}
            }
        } else if start.elapsed() >= timeout {
            return Err(format!(
                "no virtio-serial port named {name} under {SYS_VIRTIO_PORTS} after {timeout:?} \
                 (is the VM started with -device virtserialport,name={name}?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The port's writing half, shared by every thread: one lock, one
/// `write_all` per frame, so frames never interleave.
pub struct PortWriter {
    file: Mutex<File>,
}

impl PortWriter {
    /// Write frames to `file`.
    pub fn new(file: File) -> PortWriter {
        PortWriter {
            file: Mutex::new(file),
        }
    }
}

impl Outbox for PortWriter {
    fn send(&self, msg: &FromGuest) {
        let bytes = match frame::encode(msg) {
            Ok(b) => b,
            Err(e) => {
                crate::log!("cannot encode a message for the host: {e}");
                return;
            }
        };
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&bytes) {
            crate::log!("cannot write to the control port: {e}");
        }
    }
}

/// The echo mode: copy every byte read from `port` back to it, for ever (a
/// bare round trip over the same channel, for benchmarks).
pub fn echo(port: &mut File) -> ! {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                // Host not connected: the port reads as end-of-file at once
                // (see agent::serve); look again shortly.
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n) => {
                if let Err(e) = port.write_all(&buf[..n]) {
                    crate::log!("echo: cannot write to the control port: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::log!("echo: cannot read the control port: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for (entry, name) in [
            ("vport0p0", ""),
            ("vport1p1", "other\n"),
            ("vport1p2", "org.hobbes.control\n"),
        ] {
            std::fs::create_dir(dir.path().join(entry)).unwrap();
            std::fs::write(dir.path().join(entry).join("name"), name).unwrap();
        }
        assert_eq!(
            find_port(dir.path(), "org.hobbes.control"),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find_port(dir.path(), "org.hobbes"), None);
        assert_eq!(find_port(&dir.path().join("missing"), "x"), None);
    }

    #[test]
    fn frames_from_many_threads_never_interleave() {
        let (rx, tx) = nix::unistd::pipe().unwrap();
        let writer = std::sync::Arc::new(PortWriter::new(File::from(tx)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        w.send(&FromGuest::Output {
                            app: t,
                            stream: hobbes_proto::msg::Stream::Stdout,
                            data: vec![i as u8; 3000],
                        });
                    }
                })
            })
            .collect();
        let mut rx = File::from(rx);
        let reader = std::thread::spawn(move || {
            (0..200)
                .map(|_| frame::read_frame::<_, FromGuest>(&mut rx).unwrap())
                .count()
        });
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(reader.join().unwrap(), 200);
    }
}
