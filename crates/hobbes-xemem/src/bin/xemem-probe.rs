//! xemem-probe: one side of an XEMEM exchange, for tests that act inside
//! enclaves (or as separate host processes).
//!
//! Exit codes: 0 success, 1 error, 2 permission denied (EACCES), 3 a byte
//! check failed. A write to a read-only attachment kills it with SIGSEGV.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hobbes_xemem::{Access, MakeOptions, SegId, XememError};

#[derive(Parser)]
#[command(about = "Make or attach XEMEM segments (test helper)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export memory under a name, print `SEGID <id>`, then wait, hold or remove.
    Make(MakeArgs),
    /// Look a segment up, get it, attach, check/write, signal, detach, release.
    Attach(AttachArgs),
    /// Publish a composite segment (read-only, versioned): a pool of
    /// `--pages` pages, pool page i filled with `fill + i`, mapped in reverse
    /// (segment page i is pool page pages-1-i); print `SEGID <id>`, hold, remove.
    Composite(CompositeArgs),
    /// Print the node's segments as JSON.
    List,
}

#[derive(Args)]
struct CompositeArgs {
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 4)]
    pages: u64,
    #[arg(long, default_value_t = 1)]
    fill: u8,
    #[arg(long, value_parser = parse_octal)]
    mode: Option<u32>,
    #[arg(long)]
    hold_ms: Option<u64>,
}

#[derive(Args)]
struct MakeArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    size: usize,
    /// Initial value of every byte.
    #[arg(long, default_value_t = 0)]
    fill: u8,
    /// Permission bits, octal (default 600).
    #[arg(long, value_parser = parse_octal)]
    mode: Option<u32>,
    #[arg(long)]
    signalled: bool,
    /// Use the allocator (huge pages where allowed) instead of private anonymous memory.
    #[arg(long, conflicts_with = "file_range")]
    alloc: bool,
    /// Export the middle of a larger memfd (a guard page each side, filled
    /// with the complement of `fill`) with `make_file_range`, as a range
    /// of an enclave's RAM file is exported.
    #[arg(long)]
    file_range: bool,
    /// Wait for a signal on the segment before removing it.
    #[arg(long)]
    wait_signal: bool,
    /// After the signal, check every byte equals this.
    #[arg(long)]
    check: Option<u8>,
    #[arg(long)]
    hold_ms: Option<u64>,
}

#[derive(Args)]
struct AttachArgs {
    #[arg(long, conflicts_with = "segid", required_unless_present = "segid")]
    name: Option<String>,
    #[arg(long)]
    segid: Option<SegId>,
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to attach (default: the whole segment from the offset).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long)]
    ro: bool,
    #[arg(long)]
    expect: Option<u8>,
    #[arg(long, conflicts_with = "increment")]
    write: Option<u8>,
    #[arg(long)]
    increment: bool,
    #[arg(long)]
    signal: bool,
    #[arg(long)]
    hold_ms: Option<u64>,
    /// How long to retry the name lookup (the owner may not have made it yet).
    #[arg(long, default_value_t = 5000)]
    retry_ms: u64,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("{s:?}: {e}"))
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<XememError> for Failure {
    fn from(e: XememError) -> Self {
        let code = if e.errno() == libc::EACCES { 2 } else { 1 };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Make(a) => make(a),
        Cmd::Attach(a) => attach(a),
        Cmd::Composite(a) => composite(a),
        Cmd::List => list(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn make(a: MakeArgs) -> Result<(), Failure> {
    let opts = MakeOptions {
        name: Some(a.name.clone()),
        segid: None,
        mode: a.mode.unwrap_or(0),
        signalled: a.signalled || a.wait_signal,
    };
    // The memory is filled before it is exported under its name: attachers
    // poll for the name and must never see it half-filled.
    let (ptr, len, unnamed) = if a.alloc {
        let quiet = MakeOptions {
            name: None,
            signalled: false,
            ..opts.clone()
        };
        let seg = hobbes_xemem::alloc(a.size, &quiet)?;
        (seg.as_ptr(), seg.len(), Some(seg))
    } else if a.file_range {
        return make_file_range(a, opts);
    } else {
        let len = a.size.div_ceil(bytes::page()) * bytes::page();
        (bytes::map_private(len).map_err(fail)?, len, None)
    };
    // SAFETY: our own read-write memory of `len` bytes (mapped above, or
    // the segment `unnamed` keeps).
    unsafe { bytes::fill(ptr, len, a.fill) };
    // For --alloc this reuses the allocated memfd (same memory, named segid).
    // SAFETY: our own memory (the private mapping made above, never
    // unmapped, or the segment `unnamed` keeps), which no other thread uses.
    let segid = unsafe { hobbes_xemem::make(ptr, len, &opts) }?;
    let outcome = serve(&a, segid, ptr, len);
    // Dropping the allocator's segment removes it and unmaps the memory.
    drop(unnamed);
    outcome
}

/// `make --file-range`: the segment is `[page, page+len)` of a memfd of
/// `len + 2 pages`, exported without mapping or copying; this process maps
/// the whole file to fill it and to check the guards stay untouched.
fn make_file_range(a: MakeArgs, opts: MakeOptions) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    let page = bytes::page();
    let len = a.size.div_ceil(page) * page;
    let file =
        nix::sys::memfd::memfd_create(c"xemem-probe-ram", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| fail(format!("memfd_create: {e}")))?;
    let file_len = len + 2 * page;
    nix::unistd::ftruncate(&file, file_len as i64).map_err(|e| fail(format!("ftruncate: {e}")))?;
    let base = bytes::map_shared(&file, file_len).map_err(fail)?;
    let guard = !a.fill;
    // SAFETY: `base` maps `file_len` read-write bytes of our own memfd,
    // never unmapped; the segment's range is filled before it is exported.
    unsafe {
        bytes::fill(base, page, guard);
        bytes::fill(base.add(page), len, a.fill);
        bytes::fill(base.add(page + len), page, guard);
    }
    let segid = hobbes_xemem::make_file_range(file.as_fd(), page as u64, len, &opts)?;
    // SAFETY: as above; the segment is the middle of the mapping.
    let outcome = serve(&a, segid, unsafe { base.add(page) }, len);
    for at in [0, page + len] {
        // SAFETY: the guard pages of the mapping above.
        if let Some((i, got)) = unsafe { bytes::mismatch(base.add(at), page, guard) } {
            return Err(Failure {
                code: 3,
                message: format!("CHECK FAILED: guard page byte {} is {got}", at + i),
            });
        }
    }
    outcome
}

/// Print the segid, then wait for a signal (and check the memory) or hold,
/// then remove the segment.
fn serve(a: &MakeArgs, segid: SegId, ptr: *mut u8, len: usize) -> Result<(), Failure> {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "SEGID {segid}");
    let _ = out.flush();

    let outcome = if a.wait_signal {
        hobbes_xemem::wait(segid, None)?;
        let check = |want| {
            // SAFETY: the memory exported above, still mapped.
            (want, unsafe { bytes::mismatch(ptr, len, want) })
        };
        match a.check.map(check) {
            Some((_, Some((at, got)))) => Err(Failure {
                code: 3,
                message: format!("CHECK FAILED at {at}: {got}"),
            }),
            Some((_, None)) => {
                let _ = writeln!(out, "CHECK OK");
                Ok(())
            }
            None => Ok(()),
        }
    } else {
        if let Some(ms) = a.hold_ms {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(())
    };
    if let Some(Failure { code: 3, message }) = outcome.as_ref().err() {
        let _ = writeln!(out, "{message}");
    }
    hobbes_xemem::remove(segid)?;
    outcome
}

fn composite(a: CompositeArgs) -> Result<(), Failure> {
    use hobbes_xemem::composite::{write_table, Extent};
    use std::os::fd::AsFd;
    let page = bytes::page() as u64;
    let memfd = |name: &std::ffi::CStr| {
        nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| fail(format!("memfd_create: {e}")))
    };
    let (pool, table) = (memfd(c"xemem-probe-pool")?, memfd(c"xemem-probe-table")?);
    let size = a.pages * page;
    nix::unistd::ftruncate(&pool, size as i64).map_err(|e| fail(format!("ftruncate: {e}")))?;
    for i in 0..a.pages {
        let content = vec![a.fill.wrapping_add(i as u8); page as usize];
        nix::sys::uio::pwrite(&pool, &content, (i * page) as i64)
            .map_err(|e| fail(format!("pwrite: {e}")))?;
    }
    let extents: Vec<Extent> = (0..a.pages)
        .map(|i| Extent {
            seg_offset: i * page,
            pool_offset: (a.pages - 1 - i) * page,
            len: page,
        })
        .collect();
    write_table(table.as_fd(), page as u32, size, &extents)?;
    let opts = MakeOptions {
        name: Some(a.name),
        mode: a.mode.unwrap_or(0),
        ..Default::default()
    };
    let segid = hobbes_xemem::make_composite(&table, &pool, size, &opts)?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "SEGID {segid}");
    let _ = out.flush();
    if let Some(ms) = a.hold_ms {
        std::thread::sleep(Duration::from_millis(ms));
    }
    hobbes_xemem::remove(segid)?;
    Ok(())
}

fn attach(a: AttachArgs) -> Result<(), Failure> {
    let segid = match (a.segid, &a.name) {
        (Some(id), _) => id,
        (None, Some(name)) => find(name, Duration::from_millis(a.retry_ms))?,
        (None, None) => return Err(fail("give --name or --segid")),
    };
    let access = if a.ro {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let apid = hobbes_xemem::get(segid, access)?;
    let len = match a.size {
        Some(s) => s,
        None => {
            let size = hobbes_xemem::list()?
                .into_iter()
                .find(|s| s.record.segid == segid)
                .map(|s| s.record.size)
                .ok_or_else(|| fail(format!("segment {segid} vanished")))?;
            usize::try_from(size.saturating_sub(a.offset)).map_err(|e| fail(e.to_string()))?
        }
    };
    let ptr = hobbes_xemem::attach(apid, a.offset, len)?;
    if let Some(want) = a.expect {
        // SAFETY: the attachment just made, `len` bytes, readable.
        if let Some((at, got)) = unsafe { bytes::mismatch(ptr, len, want) } {
            return Err(Failure {
                code: 3,
                message: format!("byte {at} of the attachment is {got}, expected {want}"),
            });
        }
    }
    if let Some(v) = a.write {
        // SAFETY: the attachment just made, `len` bytes (read-only ones
        // fault, as the probe means them to).
        unsafe { bytes::fill(ptr, len, v) };
    } else if a.increment {
        // SAFETY: as above.
        unsafe { bytes::increment(ptr, len) };
    }
    if a.signal {
        hobbes_xemem::signal(segid)?;
    }
    if let Some(ms) = a.hold_ms {
        std::thread::sleep(Duration::from_millis(ms));
    }
    hobbes_xemem::detach(ptr)?;
    hobbes_xemem::release(apid)?;
    println!("ATTACH OK");
    Ok(())
}

/// Look `name` up in the NIS until it appears or `patience` runs out.
fn find(name: &str, patience: Duration) -> Result<SegId, Failure> {
    let deadline = Instant::now() + patience;
    loop {
        match hobbes_xemem::lookup(name) {
            Ok(Some(id)) => return Ok(id),
            // The NIS may not exist yet either when the daemon just started.
            Ok(None) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => return Err(fail(format!("no segment named {name:?}"))),
            Err(e) => return Err(e.into()),
        }
    }
}

fn list() -> Result<(), Failure> {
    let segments = hobbes_xemem::list()?;
    let json = serde_json::to_string_pretty(&segments).map_err(|e| fail(e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// Byte access to mapped memory: the probe's only unsafe code.
mod bytes {
    pub fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
    }

    /// `mmap(MAP_PRIVATE|MAP_ANONYMOUS)` of `len` read-write bytes.
    pub fn map_private(len: usize) -> Result<*mut u8, String> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(p.cast())
    }

    /// `mmap(MAP_SHARED)` of the first `len` bytes of `file`, read-write.
    pub fn map_shared(file: &std::os::fd::OwnedFd, len: usize) -> Result<*mut u8, String> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a descriptor we hold, at an
        // address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len} bytes of a memfd: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(p.cast())
    }

    // Volatile accesses: other processes change the memory, and a write to
    // a read-only attachment must really happen (and fault).

    /// Set the `len` bytes at `p` to `v`.
    ///
    /// # Safety
    ///
    /// `[p, p+len)` is mapped (a private mapping, a segment or an
    /// attachment of this process) and no reference into it is alive. A
    /// read-only attachment faults: the probe's way to show it is one.
    pub unsafe fn fill(p: *mut u8, len: usize, v: u8) {
        for i in 0..len {
            // SAFETY: in bounds of a mapping of `len` bytes (our caller's contract).
            unsafe { p.add(i).write_volatile(v) };
        }
    }

    /// Add 1 to each of the `len` bytes at `p`.
    ///
    /// # Safety
    ///
    /// As for [`fill`].
    pub unsafe fn increment(p: *mut u8, len: usize) {
        for i in 0..len {
            // SAFETY: in bounds of a mapping of `len` bytes (our caller's contract).
            unsafe {
                let b = p.add(i);
                b.write_volatile(b.read_volatile().wrapping_add(1));
            }
        }
    }

    /// The first byte that differs from `want`: (offset, value).
    ///
    /// # Safety
    ///
    /// `[p, p+len)` is mapped readable (a private mapping, a segment or an
    /// attachment of this process).
    pub unsafe fn mismatch(p: *const u8, len: usize, want: u8) -> Option<(usize, u8)> {
        (0..len)
            // SAFETY: in bounds of a readable mapping of `len` bytes (our caller's contract).
            .map(|i| (i, unsafe { p.add(i).read_volatile() }))
            .find(|(_, v)| *v != want)
    }
}
