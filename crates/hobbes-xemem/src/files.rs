//! Where segment memory is made: an unnamed file in the daemon's huge-page
//! tmpfs when the node has one and the memory is big enough for a huge
//! page, else a memfd (docs/xemem.md, "Huge pages").
//!
//! The daemon mounts that tmpfs with `huge=within_size` and names its
//! directory in the NIS header (`segment_files.dir`), so its files get
//! transparent huge pages whatever the node's shmem policy. A file made
//! there with `O_TMPFILE` behaves as a memfd: it has no name, lives while a
//! descriptor or mapping holds it, and is handed to the name server and to
//! attachers by descriptor.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use hobbes_proto::model::PageKind;
use hobbes_sys::{Errno, MemfdFlags};

use crate::hugepages;

/// The daemon's huge-page tmpfs, if the NIS names one.
pub fn huge_dir() -> Option<String> {
    crate::nis("xemem_make")
        .ok()?
        .header()
        .ok()?
        .segment_files
        .dir
}

/// A new, empty shared-memory file for `len` bytes of segment memory and the
/// pages it will get: in the daemon's huge-page tmpfs (`Thp`) when there is
/// one and `len` holds at least one huge page, else a memfd named `name`
/// (`Base`). The caller sizes it.
pub fn new_file(name: &CStr, len: usize) -> Result<(OwnedFd, PageKind), Errno> {
    if len >= hugepages::thp_size() {
        if let Some(file) = huge_dir().and_then(|dir| unnamed_file_in(&dir).ok()) {
            return Ok((file, PageKind::Thp));
        }
    }
    let memfd = hobbes_sys::memfd_create(name, MemfdFlags::empty())?;
    Ok((memfd, PageKind::Base))
}

/// An unnamed file (`O_TMPFILE`, mode 0600) in `dir`.
pub fn unnamed_file_in(dir: &str) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir)?;
    Ok(file.into())
}
