//! The guest's serial console for `hobbes console`: QEMU's end logs it
//! (`console.log`); the monitor holds the other end, drains it always (a
//! console nobody reads would stall the guest's writes), and relays it to
//! one attached client at a time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The console: QEMU's serial port as a stream, and who is attached.
pub struct Console {
    to_guest: Mutex<UnixStream>,
    client: Mutex<Option<UnixStream>>,
    /// A client holds the console: set by [`Console::attach`], before the
    /// client is told it is attached, so a second one is refused at once.
    taken: AtomicBool,
}

/// Gives the console back when the relay ends, or when it never ran (its
/// client went away before it was attached).
struct Taken(Arc<Console>);

impl Drop for Taken {
    fn drop(&mut self) {
        *lock(&self.0.client) = None;
        self.0.taken.store(false, Ordering::Release);
    }
}

impl Console {
    /// Drain `serial` (the monitor's end of the console pair) on a thread.
    pub fn start(serial: UnixStream) -> std::io::Result<Arc<Console>> {
        let console = Arc::new(Console {
            to_guest: Mutex::new(serial.try_clone()?),
            client: Mutex::new(None),
            taken: AtomicBool::new(false),
        });
        let c = console.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || c.drain(serial))?;
        Ok(console)
    }

    fn drain(&self, mut serial: UnixStream) {
        let mut buf = [0u8; 4096];
        loop {
            let n = match serial.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut client = lock(&self.client);
            if let Some(c) = client.as_mut() {
                if c.write_all(&buf[..n]).is_err() {
                    *client = None;
                }
            }
        }
        // QEMU is gone: whoever is attached sees the end.
        if let Some(c) = lock(&self.client).take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Attach `client` until it closes: what it sends goes to the guest's
    /// console, what the guest prints comes back. One client at a time.
    pub fn attach(self: &Arc<Self>) -> Result<hobbes_agent::ConsoleRelay, String> {
        if self
            .taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err("the console is in use by another client (detach it first)".into());
        }
        let taken = Taken(self.clone());
        Ok(Box::new(move |client: UnixStream| taken.0.relay(client)))
    }

    /// Carry `client` to the console and back (the console is taken).
    fn relay(&self, mut client: UnixStream) {
        match client.try_clone() {
            Ok(c) => *lock(&self.client) = Some(c),
            Err(_) => return,
        }
        let mut buf = [0u8; 1024];
        loop {
            let n = match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if lock(&self.to_guest).write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_at_a_time_sees_the_console_both_ways() {
        let (serial, mut qemu) = UnixStream::pair().unwrap();
        let console = Console::start(serial).unwrap();
        let relay = console.attach().unwrap();
        assert!(console.attach().is_err(), "taken from attach on");
        let (client_end, mut user) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(client_end));
        user.write_all(b"ls\n").unwrap();
        let mut got = [0u8; 3];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ls\n");
        qemu.write_all(b"bin\n").unwrap();
        let mut back = [0u8; 4];
        user.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"bin\n");
        drop(user);
        t.join().unwrap();
        // A relay whose client went away before it ran gives the console back.
        let unused = console.attach().unwrap();
        drop(unused);
        assert!(console.attach().is_ok());
    }
}
