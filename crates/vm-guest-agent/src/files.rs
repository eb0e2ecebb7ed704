//! `ReadFile` and `WriteFile`: file access in the guest with the caller's
//! uid and gid as the file-system identity.
//!
//! Linux keeps the file-system uid/gid (`setfsuid(2)`, `setfsgid(2)`) per
//! thread, so each operation runs on a thread of its own
//! ([`on_own_thread`]) that sets them first and ends with the operation:
//! nothing has to be restored and no other thread is affected.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

/// A read: up to `len` bytes of `path` from `offset`, as `uid`/`gid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    /// Absolute path in the guest.
    pub path: String,
    /// Byte offset.
    pub offset: u64,
    /// Most bytes to read (already capped at `FILE_CHUNK`).
    pub len: u32,
    /// File-system uid.
    pub uid: u32,
    /// File-system gid.
    pub gid: u32,
}

/// A write of `data` to `path`, truncating or appending, as `uid`/`gid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    /// Absolute path in the guest.
    pub path: String,
    /// The bytes.
    pub data: Vec<u8>,
    /// Append instead of truncating.
    pub append: bool,
    /// Permission bits of a file this creates (the umask applies).
    pub mode: u32,
    /// File-system uid.
    pub uid: u32,
    /// File-system gid.
    pub gid: u32,
}

/// Run `op` on a new thread (not waited for). If no thread can be started
/// the operation runs here rather than never.
pub fn on_own_thread(op: impl FnOnce() + Send + 'static) {
    // The closure is handed back if the spawn fails; a shared slot lets us
    // take it either way.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(op)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("file-op".into())
        .spawn(move || {
            if let Some(op) = theirs.lock().unwrap_or_else(|p| p.into_inner()).take() {
                op()
            }
        });
    if let Err(e) = spawned {
        crate::log!("cannot start a file thread ({e}); doing the file operation in line");
        if let Some(op) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            op()
        }
    }
}

/// Become `uid`/`gid` for file access on this thread.
fn set_fs_identity(uid: u32, gid: u32) {
    // Gid first: once the fsuid is not root the thread may lose the
    // capability to change it. (Neither call reports errors; a refused change
    // leaves root's identity, and the kernel's checks then are root's.
    // The agent runs as root, so it is never refused.)
    setfsgid(Gid::from_raw(gid));
    setfsuid(Uid::from_raw(uid));
}

/// Do `req` with its identity. Call on a thread of its own.
pub fn read(req: &FileRead) -> Result<(Vec<u8>, bool), String> {
    set_fs_identity(req.uid, req.gid);
    let file = std::fs::File::open(&req.path)
        .map_err(|e| format!("cannot open {} for reading: {e}", req.path))?;
    let mut data = vec![0u8; req.len as usize];
    let mut got = 0;
    while got < data.len() {
        match file.read_at(&mut data[got..], req.offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read {}: {e}", req.path)),
        }
    }
    data.truncate(got);
    let eof = got < req.len as usize;
    Ok((data, eof))
}

/// Do `req` with its identity. Call on a thread of its own.
pub fn write(req: &FileWrite) -> Result<(), String> {
    set_fs_identity(req.uid, req.gid);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .append(req.append)
        .truncate(!req.append)
        .mode(req.mode)
        .open(&req.path)
        .map_err(|e| format!("cannot open {} for writing: {e}", req.path))?;
    file.write_all(&req.data)
        .map_err(|e| format!("cannot write {}: {e}", req.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` on its own thread, as the agent does, and return its result.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    fn me() -> (u32, u32) {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    }

    #[test]
    fn writes_then_reads_back_in_chunks_with_eof_on_a_short_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f").display().to_string();
        let (uid, gid) = me();
        let w = |data: &[u8], append| FileWrite {
            path: path.clone(),
            data: data.to_vec(),
            append,
            mode: 0o600,
            uid,
            gid,
        };
        let (a, b) = (w(b"hello ", false), w(b"world", true));
        on_thread(move || write(&a)).unwrap();
        on_thread(move || write(&b)).unwrap();
        let r = |offset, len| FileRead {
            path: path.clone(),
            offset,
            len,
            uid,
            gid,
        };
        let first = r(0, 6);
        assert_eq!(
            on_thread(move || read(&first)).unwrap(),
            (b"hello ".to_vec(), false)
        );
        let rest = r(6, 100);
        assert_eq!(
            on_thread(move || read(&rest)).unwrap(),
            (b"world".to_vec(), true)
        );
        let past = r(1000, 10);
        assert_eq!(on_thread(move || read(&past)).unwrap(), (vec![], true));

        let trunc = w(b"x", false);
        on_thread(move || write(&trunc)).unwrap();
        let all = r(0, 100);
        assert_eq!(
            on_thread(move || read(&all)).unwrap(),
            (b"x".to_vec(), true)
        );
    }

    #[test]
    fn errors_name_the_path_and_the_reason() {
        let (uid, gid) = me();
        let req = FileRead {
            path: "/nonexistent/f".into(),
            offset: 0,
            len: 1,
            uid,
            gid,
        };
        let err = on_thread(move || read(&req)).unwrap_err();
        assert_eq!(
            err,
            "cannot open /nonexistent/f for reading: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_identity_is_the_callers_not_roots() {
        if !rustix::process::getuid().is_root() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout(),
                "SKIP the_identity_is_the_callers_not_roots: needs root"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let req = FileRead {
            path: secret.display().to_string(),
            offset: 0,
            len: 1,
            uid: 1000,
            gid: 1000,
        };
        let err = on_thread(move || read(&req)).unwrap_err();
        assert!(err.contains("Permission denied"), "{err}");
        // Other threads (this one) kept root's identity.
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    }
}
