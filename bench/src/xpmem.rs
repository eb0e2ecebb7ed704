//! `hobbes-bench xpmem`: whole-address-space XPMEM shares (docs/xemem.md,
//! "Whole-address-space shares") against their floors, same run:
//!
//! 1. first attach of a 64 MiB range of a whole-address-space share (the
//!    owner converts it on demand) + touch, against a plain `make` of the
//!    same kind of range by the owner + `get` + `attach` + touch;
//! 2. a cached re-attach (+ detach) of that range against one Unix-socket
//!    round trip carrying the wire's request and reply sizes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hobbes_client::proto::model::{Access, SegId};
use hobbes_client::proto::xpmem_as::{REPLY_HEADER_SIZE, REQUEST_SIZE};
use hobbes_xemem::MakeOptions;
use nix::sys::mman::{MapFlags, ProtFlags};

use crate::{header, median, row, wait_file, BenchDaemon};

const SIZE: usize = 64 << 20;
const HUGE: usize = 2 << 20;
const REPS: usize = 9;
const FIRST_TARGET: f64 = 1.5;
const CACHED_TARGET: f64 = 2.0;

// ---------------------------------------------------------------------------
// The owner process.

/// `hobbes-bench xpmem-owner`: share the whole address space, print the
/// segid, then serve until stdin closes: `buf` maps a fresh written 64 MiB
/// private buffer (2 MiB-aligned, never at an address used before, so no
/// attacher has it cached) and prints its address; `make ADDR` exports that
/// buffer as a plain segment (in place) and prints its segid; `free ADDR
/// [SEGID]` removes the segment and unmaps the buffer (its memory goes back).
pub fn owner_main() -> Result<()> {
    const SLOTS: usize = 256;
    let whole = hobbes_xemem::wholeas::make_whole(&MakeOptions::default())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{whole}")?;
    out.flush()?;
    let span = std::num::NonZeroUsize::new(SLOTS * SIZE + HUGE).context("size")?;
    // SAFETY: a new reservation where the kernel chooses replaces nothing;
    // it stays until exit and only this function maps into it.
    let res = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            span,
            ProtFlags::PROT_NONE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
        )
    }?
    .as_ptr() as usize;
    let first = res.next_multiple_of(HUGE);
    let mut next = 0;
    let slot = |addr: usize, prot: ProtFlags, flags: MapFlags| -> Result<()> {
        // SAFETY: a slot of our own reservation, which only this function
        // maps and nothing else refers to.
        unsafe {
            nix::sys::mman::mmap_anonymous(
                std::num::NonZeroUsize::new(addr),
                std::num::NonZeroUsize::new(SIZE).context("size")?,
                prot,
                flags | MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
            )
        }?;
        Ok(())
    };
    for line in std::io::stdin().lines() {
        let line = line?;
        let mut f = line.split_whitespace();
        let addr_arg = |s: Option<&str>| -> Result<usize> {
            Ok(usize::from_str_radix(
                s.context("ADDR")?.trim_start_matches("0x"),
                16,
            )?)
        };
        match f.next() {
            Some("buf") => {
                anyhow::ensure!(next < SLOTS, "xpmem-owner: out of slots");
                let addr = first + next * SIZE;
                next += 1;
                slot(
                    addr,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::empty(),
                )?;
                // SAFETY: the slot just mapped read-write, ours alone.
                unsafe { std::ptr::write_bytes(addr as *mut u8, 0xa5, SIZE) };
                writeln!(out, "{addr:#x}")?;
            }
            Some("make") => {
                let addr = addr_arg(f.next())?;
                // SAFETY: a buffer this process mapped with `buf` and
                // nothing else uses; no thread writes it meanwhile.
                let segid =
                    unsafe { hobbes_xemem::make(addr as *mut u8, SIZE, &MakeOptions::default()) }?;
                writeln!(out, "{segid}")?;
            }
            Some("free") => {
                let addr = addr_arg(f.next())?;
                if let Some(segid) = f.next() {
                    hobbes_xemem::remove(segid.parse()?)?;
                }
                slot(addr, ProtFlags::PROT_NONE, MapFlags::MAP_NORESERVE)?;
                writeln!(out, "freed")?;
            }
            other => bail!("xpmem-owner: unknown command {other:?}"),
        }
        out.flush()?;
    }
    Ok(())
}

/// The owner process, as the attacher sees it; stdin closed and reaped on
/// drop.
struct Owner {
    helper: crate::Helper,
    whole: SegId,
}

impl Owner {
    fn spawn() -> Result<Owner> {
        let mut helper = crate::Helper::spawn("xpmem-owner", &[])?;
        let whole = helper.read_line()?.parse()?;
        Ok(Owner { helper, whole })
    }

    fn ask(&mut self, what: &str) -> Result<String> {
        self.helper.ask(what)
    }

    fn buf(&mut self) -> Result<usize> {
        let a = self.ask("buf")?;
        Ok(usize::from_str_radix(a.trim_start_matches("0x"), 16)?)
    }
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Read one byte of every page of the range.
///
/// # Safety
/// The range must stay mapped and readable during the call.
unsafe fn touch(ptr: *const u8, len: usize) -> u8 {
    let mut acc = 0u8;
    for off in (0..len).step_by(4096) {
        // SAFETY: off < len, inside the range the caller vouches for.
        acc ^= unsafe { ptr.add(off).read_volatile() };
    }
    acc
}

/// Whole-address-space share: attach a range the owner never converted,
/// touch it. Returns (attach, total) µs.
fn first_attach_whole(owner: &mut Owner, apid: i64) -> Result<(f64, f64)> {
    let addr = owner.buf()?;
    let t = Instant::now();
    let p = hobbes_xemem::attach(apid, addr as u64, SIZE)?;
    let attached = us(t);
    // SAFETY: attached for SIZE readable bytes until the detach below.
    std::hint::black_box(unsafe { touch(p, SIZE) });
    let total = us(t);
    hobbes_xemem::detach(p)?;
    owner.ask(&format!("free {addr:#x}"))?;
    Ok((attached, total))
}

/// Plain share of the same kind of range: the owner makes it (in place),
/// then get + attach + touch. Returns (make, total) µs.
fn first_attach_plain(owner: &mut Owner) -> Result<(f64, f64)> {
    let addr = owner.buf()?;
    let t = Instant::now();
    let segid: SegId = owner.ask(&format!("make {addr:#x}"))?.parse()?;
    let made = us(t);
    let apid = hobbes_xemem::get(segid, Access::ReadWrite)?;
    let p = hobbes_xemem::attach(apid, 0, SIZE)?;
    // SAFETY: attached for SIZE readable bytes until the detach below.
    std::hint::black_box(unsafe { touch(p, SIZE) });
    let total = us(t);
    hobbes_xemem::detach(p)?;
    hobbes_xemem::release(apid)?;
    owner.ask(&format!("free {addr:#x} {segid}"))?;
    Ok((made, total))
}

/// `hobbes-bench xpmem`.
pub fn bench(d: &BenchDaemon) -> Result<()> {
    // The owner and this process talk to the bench's daemon.
    std::env::set_var(hobbes_client::proto::ENV_STATE_DIR, d.dir.path());
    let mut owner = Owner::spawn()?;
    let apid = hobbes_xemem::get(owner.whole, Access::ReadWrite)?;
    // Warm both paths once (first conversion starts the owner's files).
    first_attach_whole(&mut owner, apid)?;
    first_attach_plain(&mut owner)?;
    let (mut whole, mut whole_attach, mut plain, mut plain_make) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..REPS {
        let mut one_whole = |o: &mut Owner| -> Result<()> {
            let (a, t) = first_attach_whole(o, apid)?;
            whole_attach.push(a);
            whole.push(t);
            Ok(())
        };
        if i % 2 == 0 {
            one_whole(&mut owner)?;
            let (m, t) = first_attach_plain(&mut owner)?;
            plain_make.push(m);
            plain.push(t);
        } else {
            let (m, t) = first_attach_plain(&mut owner)?;
            plain_make.push(m);
            plain.push(t);
            one_whole(&mut owner)?;
        }
    }
    header(&format!(
        "xpmem: first attach of a 64 MiB range + touch (median of {REPS}, alternating)"
    ));
    let (w, p) = (median(whole), median(plain));
    row(
        "whole-AS share: attach (converts on demand) + touch",
        w,
        p,
        "us",
        &format!("target <= {FIRST_TARGET}x"),
    );
    println!(
        "  parts: whole-AS attach {:.0} us; plain make (owner, in place) {:.0} us",
        median(whole_attach),
        median(plain_make)
    );
    println!(
        "  {:.2}x plain make+get+attach: {}",
        w / p,
        verdict(w / p <= FIRST_TARGET)
    );
    bench_cached(d, &mut owner, apid)
}

/// Cached re-attach + detach against one Unix-socket round trip.
fn bench_cached(d: &BenchDaemon, owner: &mut Owner, apid: i64) -> Result<()> {
    const ROUNDS: usize = 7;
    const N: usize = 2000;
    let addr = owner.buf()?;
    let p = hobbes_xemem::attach(apid, addr as u64, SIZE)?;
    hobbes_xemem::detach(p)?;
    let sock = d.dir.path().join("xpmem-echo.sock");
    let echo = Command::new(std::env::current_exe()?)
        .arg("xemem-echo")
        .arg(&sock)
        .args([REQUEST_SIZE.to_string(), REPLY_HEADER_SIZE.to_string()])
        .spawn()
        .context("spawn xemem-echo")?;
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _echo = Reaped(echo);
    wait_file(&sock.with_extension("ready"))?;
    let mut s = UnixStream::connect(&sock)?;
    let (req, mut reply) = ([3u8; REQUEST_SIZE], [0u8; REPLY_HEADER_SIZE]);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            let q = hobbes_xemem::attach(apid, addr as u64, SIZE)?;
            hobbes_xemem::detach(q)?;
            v.push(us(t));
        }
        ours.push(median(v));
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            s.write_all(&req)?;
            s.read_exact(&mut reply)?;
            v.push(us(t));
        }
        floor.push(median(v));
    }
    let stats = hobbes_xemem::wholeas::stats();
    header(&format!(
        "xpmem: cached re-attach + detach of 64 MiB vs Unix-socket round trip \
         ({REQUEST_SIZE} B / {REPLY_HEADER_SIZE} B) (median of {ROUNDS} x {N})"
    ));
    let (o, f) = (median(ours), median(floor));
    row(
        "cached attach+detach vs socket round trip",
        o,
        f,
        "us",
        &format!("target <= {CACHED_TARGET}x"),
    );
    println!(
        "  {:.2}x one round trip: {} (cache hits {}, misses {})",
        o / f,
        verdict(o / f <= CACHED_TARGET),
        stats.cache_hits,
        stats.cache_misses
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    match met {
        true => "met",
        false => "MISSED",
    }
}
