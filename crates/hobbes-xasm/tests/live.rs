//! XASM through a real name server, in process: producers in this test's
//! threads, consumers in others. The cross-process and cross-enclave
//! checks are in crates/leviathan/tests/xasm.rs.
//!
//! One test function: the XEMEM state (connection, registries) is
//! process-global and follows `HOBBES_STATE_DIR`, so one daemon serves every
//! scenario, in order, once per mechanism.

#[path = "../../hobbes-xemem/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use hobbes_xasm::{
    diag, mechanism_available, scan_unavailable_reason, Consumer, Mechanism, Producer,
    RegionOptions, XasmError,
};
use support::daemon::Daemon;

const PAGE: usize = 4096;

fn opts(name: &str, m: Mechanism, keep: usize) -> RegionOptions {
    RegionOptions {
        name: name.into(),
        mode: 0o644,
        keep,
        mechanism: Some(m),
        max_extents: hobbes_xasm::DEFAULT_MAX_EXTENTS,
    }
}

/// The producer's pages as one value per page (every byte of the page).
struct Model {
    pages: Vec<u8>,
}

impl Model {
    fn new(n: usize) -> Model {
        Model { pages: vec![0; n] }
    }

    fn write(&mut self, p: &mut Producer, page: usize, v: u8) {
        p.as_mut_slice()[page * PAGE..(page + 1) * PAGE].fill(v);
        self.pages[page] = v;
    }

    /// Every byte of `bytes` matches the model.
    fn check(&self, bytes: &[u8], what: &str) {
        assert_eq!(bytes.len(), self.pages.len() * PAGE, "{what}: length");
        for (i, want) in self.pages.iter().enumerate() {
            let page = &bytes[i * PAGE..(i + 1) * PAGE];
            if let Some(j) = page.iter().position(|b| b != want) {
                panic!("{what}: page {i} byte {j} is {}, expected {want}", page[j]);
            }
        }
    }
}

#[test]
fn xasm_in_process() {
    let Some(daemon) = Daemon::start("xasm_in_process") else {
        return;
    };
    for var in support::daemon::HOBBES_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HOBBES_STATE_DIR", daemon.state_dir());
    options_are_checked();
    let mut mechanisms = vec![Mechanism::Mprotect];
    if mechanism_available(Mechanism::Scan) {
        mechanisms.insert(0, Mechanism::Scan);
    } else {
        println!(
            "SKIP xasm_in_process (scan): {}",
            scan_unavailable_reason().unwrap_or_default()
        );
    }
    for m in mechanisms {
        let t = Instant::now();
        basics(m);
        retention_and_holds(m);
        max_extents_bound_mapping_count(m);
        random_writes_over_a_large_region(m);
        scattered_writes_refresh_frames(m);
        two_regions_snapshot_concurrently(m);
        producer_exit_with_attachments(m);
        register_in_place(m);
        println!("mechanism {m}: scenarios took {:?}", t.elapsed());
    }
}

fn options_are_checked() {
    let bad = |o: RegionOptions, len: usize| {
        let e = Producer::create(len, &o).err().expect("refused");
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        e.to_string()
    };
    let o = |name: &str| RegionOptions::named(name);
    assert!(bad(o(""), PAGE).contains("1-100 characters"));
    assert!(bad(o("a@b"), PAGE).contains("no '@'"));
    assert!(bad(o("ok"), 100).contains("multiple of the page size"));
    assert!(bad(RegionOptions { keep: 0, ..o("ok") }, PAGE).contains("keep"));
    assert!(bad(
        RegionOptions {
            max_extents: 1,
            ..o("ok")
        },
        PAGE
    )
    .contains("max_extents"));
    assert!(bad(
        RegionOptions {
            mode: 0o1777,
            ..o("ok")
        },
        PAGE
    )
    .contains("mode"));
    // A bad HOBBES_XASM_MECHANISM is reported, not ignored.
    std::env::set_var(hobbes_xasm::MECHANISM_ENV, "redirect");
    assert!(bad(o("ok"), PAGE).contains("HOBBES_XASM_MECHANISM"));
    std::env::set_var(hobbes_xasm::MECHANISM_ENV, "mprotect");
    let p = Producer::create(PAGE, &o("t-env")).unwrap();
    assert_eq!(p.mechanism(), Mechanism::Mprotect);
    drop(p);
    std::env::remove_var(hobbes_xasm::MECHANISM_ENV);
    // A taken name: EEXIST from the name server.
    let p = Producer::create(PAGE, &o("t-dup")).unwrap();
    let e = Producer::create(PAGE, &o("t-dup")).err().unwrap();
    assert_eq!(e.errno(), libc::EEXIST, "{e}");
    drop(p);
    // Gone with its producer: the name is free again.
    drop(Producer::create(PAGE, &o("t-dup")).unwrap());
    assert_eq!(
        Consumer::open("t-nothing-here").err().unwrap().errno(),
        libc::ENOENT
    );
}

fn basics(m: Mechanism) {
    let name = format!("t-basic-{m}");
    let n = 64;
    let mut p = Producer::create(n * PAGE, &opts(&name, m, 2)).unwrap();
    assert_eq!(
        (p.mechanism(), p.len(), p.name()),
        (m, n * PAGE, name.as_str())
    );
    let c = Consumer::open(&name).unwrap();
    assert_eq!(
        (c.latest(), c.region_len(), c.keep(), c.mechanism()),
        (None, n * PAGE, 2, Some(m))
    );
    assert!(c.attach_latest().unwrap().is_none());
    assert_eq!(
        c.wait_newer(0, Some(Duration::from_millis(30))).unwrap(),
        None
    );
    let mut model = Model::new(n);
    for i in 0..n {
        model.write(&mut p, i, i as u8 + 1);
    }
    let i1 = p.snapshot().unwrap();
    assert_eq!(
        (i1.version, i1.dirty_pages, i1.copied_pages, i1.extents),
        (1, n as u64, n as u64, 1)
    );
    let v1 = c.attach(1).unwrap();
    model.check(v1.as_slice(), "version 1");
    let model1 = model.pages.clone();

    // Four pages written: only they are copied.
    for (i, v) in [(3, 200), (10, 201), (11, 202), (12, 203)] {
        model.write(&mut p, i, v);
    }
    let i2 = p.snapshot().unwrap();
    assert_eq!((i2.version, i2.dirty_pages, i2.copied_pages), (2, 4, 4));
    assert_eq!(i2.extents, 5, "3 | 4 | 10-12 | 13.. plus 0-2");
    let v2 = c.attach_latest().unwrap().unwrap();
    assert_eq!(v2.version(), 2);
    model.check(v2.as_slice(), "version 2");
    // Version 1 is unchanged under its consumer.
    Model { pages: model1 }.check(v1.as_slice(), "version 1 after writes");

    // Reads do not count as writes; a snapshot with nothing written is
    // cheap and has the same contents.
    let sum: u64 = p.as_mut_slice().iter().map(|b| *b as u64).sum();
    assert!(sum > 0);
    let i3 = p.snapshot().unwrap();
    assert_eq!(
        (i3.version, i3.dirty_pages, i3.copied_pages, i3.extents),
        (3, 0, 0, i2.extents)
    );
    let v3 = c.attach(3).unwrap();
    assert_eq!(v3.as_slice(), v2.as_slice());
    assert_eq!(c.wait_newer(2, None).unwrap(), Some(3));

    // A waiter (in another thread, maybe already waiting) gets the next
    // version, well before its timeout.
    let c2 = Consumer::open(&name).unwrap();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let v = c2.wait_newer(3, Some(Duration::from_secs(20))).unwrap();
        (v, t.elapsed())
    });
    model.write(&mut p, 0, 77);
    assert_eq!(p.snapshot().unwrap().version, 4);
    let (v, took) = waiter.join().unwrap();
    assert_eq!(v, Some(4));
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Versions are read-only: a read-write get is refused.
    let segid = hobbes_xemem::lookup(&format!("{name}@4")).unwrap().unwrap();
    let e = hobbes_xemem::get(segid, hobbes_xemem::Access::ReadWrite).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert_eq!(c.attach(0).err().unwrap().errno(), libc::EINVAL);
    assert_eq!(c.attach(99).err().unwrap().errno(), libc::ENOENT);
    drop((v1, v2, v3));
}

fn retention_and_holds(m: Mechanism) {
    let name = format!("t-keep-{m}");
    let n = 256u64;
    let page = PAGE as u64;
    let mut p = Producer::create(n as usize * PAGE, &opts(&name, m, 2)).unwrap();
    let c = Consumer::open(&name).unwrap();
    let mut model = Model::new(n as usize);
    for i in 0..n as usize {
        model.write(&mut p, i, 1);
    }
    p.snapshot().unwrap();
    let fds0 = diag::open_fds();
    for step in 2..=12u64 {
        for k in 0..8 {
            model.write(&mut p, ((step * 13 + k * 29) % n) as usize, step as u8);
        }
        let info = p.snapshot().unwrap();
        let st = p.stats();
        assert!(st.live_versions <= 2, "step {step}: {st:?}");
        // The pool holds the latest full copy plus at most K-1 versions' dirty pages.
        assert!(
            st.pool_allocated_bytes <= (n + 8) * page,
            "step {step}: {st:?}"
        );
        // Freed slots are punched, but for the latest reclaim's (kept for reuse).
        assert!(st.pool_kept_bytes <= 8 * page, "{st:?}");
        assert!(
            st.pool_resident_bytes <= st.pool_allocated_bytes + st.pool_kept_bytes,
            "punched: {st:?}"
        );
        assert!(
            st.pool_size_bytes <= (n + 2 * 8 + 8) * page,
            "file bounded: {st:?}"
        );
        if step > 3 {
            assert_eq!(info.reclaimed_versions, 1, "step {step}");
        }
    }
    assert!(diag::open_fds() <= fds0 + 4, "descriptors bounded");
    for v in 1..=10 {
        let vname = format!("{name}@{v}");
        assert_eq!(
            hobbes_xemem::lookup(&vname).unwrap(),
            None,
            "{vname} reclaimed"
        );
        let e = c.attach(v).err().unwrap();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
    }

    // A held version outlives K; released, the next snapshot reclaims it.
    let held = c.attach(12).unwrap();
    let held_model = model.pages.clone();
    for step in 13..=16u64 {
        model.write(&mut p, (step % n) as usize, step as u8);
        p.snapshot().unwrap();
    }
    let st = p.stats();
    assert_eq!((st.live_versions, st.held_versions), (3, 1), "{st:?}");
    assert!(hobbes_xemem::lookup(&format!("{name}@12"))
        .unwrap()
        .is_some());
    Model {
        pages: held_model.clone(),
    }
    .check(held.as_slice(), "held version 12");
    drop(held);
    model.write(&mut p, 5, 99);
    let info = p.snapshot().unwrap();
    assert_eq!(info.reclaimed_versions, 2, "12 and 15");
    assert_eq!(hobbes_xemem::lookup(&format!("{name}@12")).unwrap(), None);

    // Explicit reclaim() of a version released between snapshots.
    let held = c.attach(17).unwrap();
    for _ in 0..2 {
        model.write(&mut p, 7, 42);
        p.snapshot().unwrap();
    }
    assert_eq!(p.reclaim().unwrap(), 0, "still held");
    drop(held);
    assert_eq!(p.reclaim().unwrap(), 1);
    assert_eq!(p.stats().live_versions, 2);
    // A grant (get without attach) holds too.
    let segid = hobbes_xemem::lookup(&format!("{name}@19"))
        .unwrap()
        .unwrap();
    let apid = hobbes_xemem::get(segid, hobbes_xemem::Access::ReadOnly).unwrap();
    for _ in 0..3 {
        model.write(&mut p, 8, 43);
        p.snapshot().unwrap();
    }
    assert!(p.live_versions().contains(&19));
    hobbes_xemem::release(apid).unwrap();
    assert_eq!(p.reclaim().unwrap(), 1);
    let latest = c.attach_latest().unwrap().unwrap();
    model.check(latest.as_slice(), "latest");
}

fn max_extents_bound_mapping_count(m: Mechanism) {
    let name = format!("t-extents-{m}");
    let n = 4096usize; // 16 MiB
    let max = 64;
    let mut o = opts(&name, m, 1);
    o.max_extents = max;
    let mut p = Producer::create(n * PAGE, &o).unwrap();
    let c = Consumer::open(&name).unwrap();
    let mut model = Model::new(n);
    p.snapshot().unwrap();
    // Random-order single pages: without compaction every one would be an extent.
    let mut x = 12345u64;
    let mut compacted = 0;
    let maps0 = diag::mappings();
    for step in 0..30 {
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let page = (x >> 33) as usize % n;
            model.write(&mut p, page, (step % 250) as u8 + 1);
        }
        let info = p.snapshot().unwrap();
        assert!(info.extents <= max as u64, "step {step}: {info:?}");
        compacted += info.compacted_pages;
        if step % 10 == 9 {
            let s = c.attach(info.version).unwrap();
            let maps = diag::mappings();
            assert!(
                maps <= maps0 + max + 4,
                "one mapping per extent: {maps0} before, {maps} with {info:?}"
            );
            model.check(s.as_slice(), &format!("compacted version {}", info.version));
        }
    }
    assert!(compacted > 0, "compaction ran");
    let st = p.stats();
    assert!(
        st.pool_size_bytes <= 3 * (n * PAGE) as u64,
        "pool file bounded: {st:?}"
    );
}

/// Single pages written at random, a region over its extent budget: the
/// chunks are rewritten into frames, and once every chunk has two frames a
/// snapshot copies about the pages written since the previous one, not
/// whole chunks. A version a consumer holds is never touched by a refresh,
/// and when the writes stop scattering the frames are given back.
fn scattered_writes_refresh_frames(m: Mechanism) {
    let name = format!("t-frames-{m}");
    let n = 8192usize; // 32 MiB: 16 chunks
    let max = 128;
    let mut o = opts(&name, m, 2);
    o.max_extents = max;
    let mut p = Producer::create(n * PAGE, &o).unwrap();
    let c = Consumer::open(&name).unwrap();
    let mut model = Model::new(n);
    p.snapshot().unwrap();
    let mut x = 4242u64;
    let mut held: Option<(hobbes_xasm::Snapshot, Vec<u8>)> = None;
    let mut late_copies = Vec::new();
    let mut saw_frames = false;
    for step in 0..40u64 {
        for _ in 0..80 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            model.write(&mut p, (x >> 33) as usize % n, (step % 250) as u8 + 1);
        }
        let info = p.snapshot().unwrap();
        assert!(info.extents <= max as u64, "step {step}: {info:?}");
        assert_eq!(info.copied_pages, info.dirty_pages, "step {step}: {info:?}");
        saw_frames |= p.stats().pool_frame_bytes > 0;
        if step >= 20 {
            late_copies.push(info.copied_pages + info.compacted_pages);
        }
        let s = c.attach(info.version).unwrap();
        model.check(s.as_slice(), &format!("version {}", info.version));
        // Hold one version for six snapshots, then check it is unchanged.
        match held.take() {
            Some((old, pages)) if step % 7 == 6 => {
                let was = Model { pages };
                was.check(old.as_slice(), &format!("held version {}", old.version()));
            }
            Some(h) => held = Some(h),
            None => held = Some((s, model.pages.clone())),
        }
    }
    assert!(saw_frames, "frames were kept");
    // Settled: about two copies per written page (80), far from a chunk
    // (2048 pages) per snapshot.
    late_copies.sort_unstable();
    let median = late_copies[late_copies.len() / 2];
    assert!(
        median < 600,
        "copies per snapshot once settled: {late_copies:?}"
    );
    // The whole region rewritten each time: no longer fragmented, the
    // frames go back.
    drop(held);
    for step in 0..12u64 {
        for page in 0..n {
            model.write(&mut p, page, step as u8 + 100);
        }
        p.snapshot().unwrap();
    }
    let st = p.stats();
    assert_eq!(st.pool_frame_bytes, 0, "frames given back: {st:?}");
    let s = c.attach_latest().unwrap().unwrap();
    model.check(s.as_slice(), "after the runs");
    println!("{m}: scattered writes, copies per snapshot once settled: {late_copies:?}");
}

/// Two regions snapshotting at the same time in two threads (a second
/// snapshot of the *same* Producer cannot start: it needs `&mut`), each with
/// a consumer thread checking every version it gets.
/// 64 MiB written in random order with the default budget (4096 extents):
/// every version stays under it, far from vm.max_map_count.
fn random_writes_over_a_large_region(m: Mechanism) {
    let name = format!("t-large-{m}");
    let n = 16384usize;
    let mut p = Producer::create(n * PAGE, &opts(&name, m, 2)).unwrap();
    let c = Consumer::open(&name).unwrap();
    let mut model = Model::new(n);
    p.snapshot().unwrap();
    let mut x = 987654321u64;
    let (mut compacted, mut peak) = (0, 0);
    for step in 0..8 {
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            model.write(&mut p, (x >> 33) as usize % n, step as u8 + 1);
        }
        let info = p.snapshot().unwrap();
        assert!(info.extents <= 4096, "step {step}: {info:?}");
        compacted += info.compacted_pages;
        peak = peak.max(info.extents);
    }
    assert!(compacted > 0);
    let maps0 = diag::mappings();
    let s = c.attach_latest().unwrap().unwrap();
    assert!(diag::mappings() <= maps0 + 4096 + 4);
    model.check(s.as_slice(), "large region");
    println!(
        "{m}: 64 MiB, 8 x 3000 random pages: peak {peak} extents, {compacted} pages compacted"
    );
}

fn two_regions_snapshot_concurrently(m: Mechanism) {
    let mut handles = Vec::new();
    for r in 0..2 {
        let name = format!("t-conc{r}-{m}");
        let mut p = Producer::create(32 * PAGE, &opts(&name, m, 2)).unwrap();
        let c = Consumer::open(&name).unwrap();
        let consumer = std::thread::spawn(move || {
            let (mut last, mut seen) = (0, 0);
            loop {
                let v = match c.wait_newer(last, Some(Duration::from_secs(20))) {
                    Ok(Some(v)) => v,
                    Err(XasmError::ProducerGone { .. }) => break,
                    other => panic!("{name}: wait_newer: {:?}", other.map_err(|e| e.to_string())),
                };
                last = v;
                let Ok(s) = c.attach(v) else { continue };
                // Step v wrote byte v into every page: all pages agree.
                let want = (v % 251) as u8;
                assert!(
                    s.as_slice().iter().all(|b| *b == want),
                    "{name}@{v} is torn"
                );
                seen += 1;
            }
            seen
        });
        let producer = std::thread::spawn(move || {
            for step in 1..=300u64 {
                p.as_mut_slice().fill((step % 251) as u8);
                assert_eq!(p.snapshot().unwrap().version, step);
            }
        });
        handles.push((producer, consumer));
    }
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for (p, c) in handles {
        producers.push(p);
        consumers.push(c);
    }
    for p in producers {
        p.join().expect("producer thread");
    }
    for c in consumers {
        let seen = c.join().expect("consumer thread");
        assert!(seen > 0, "the consumer checked versions");
    }
}

fn producer_exit_with_attachments(m: Mechanism) {
    let name = format!("t-exit-{m}");
    let n = 16;
    let mut p = Producer::create(n * PAGE, &opts(&name, m, 1)).unwrap();
    let mut model = Model::new(n);
    for i in 0..n {
        model.write(&mut p, i, 9);
    }
    p.snapshot().unwrap();
    let c = Consumer::open(&name).unwrap();
    let snap = c.attach_latest().unwrap().unwrap();
    let c2 = Consumer::open(&name).unwrap();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        (c2.wait_newer(1, Some(Duration::from_secs(20))), t.elapsed())
    });
    drop(p);
    let (r, took) = waiter.join().unwrap();
    match r {
        Err(e @ XasmError::ProducerGone { .. }) => {
            assert_eq!(e.errno(), libc::EPIPE);
            assert!(e.to_string().contains("closed"), "{e}");
        }
        other => panic!(
            "expected ProducerGone, got {:?}",
            other.map_err(|e| e.to_string())
        ),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(c.is_closed());
    // The attachment stays readable and intact.
    model.check(snap.as_slice(), "attachment after the producer exited");
    assert_eq!(hobbes_xemem::lookup(&name).unwrap(), None);
    assert_eq!(c.attach(1).err().unwrap().errno(), libc::ENOENT);
    assert!(matches!(
        c.wait_newer(0, Some(Duration::from_millis(10))),
        Ok(Some(1))
    ));
}

fn register_in_place(m: Mechanism) {
    let n = 8;
    let len = n * PAGE;
    let mut mem = vec![0u8; len + PAGE];
    let off = mem.as_ptr().align_offset(PAGE);
    // A page-aligned range inside a Vec: private anonymous memory (the
    // allocator maps blocks this large with mmap).
    let base = mem[off..].as_mut_ptr();
    // SAFETY: base..base+len is inside `mem`, which outlives the producer,
    // and only the producer touches it meanwhile.
    let mut p =
        unsafe { Producer::register(base, len, &opts(&format!("t-reg-{m}"), m, 1)) }.unwrap();
    assert_eq!(p.as_ptr(), base);
    p.as_mut_slice().fill(3);
    p.snapshot().unwrap();
    p.as_mut_slice()[PAGE..2 * PAGE].fill(4);
    let info = p.snapshot().unwrap();
    assert_eq!((info.dirty_pages, info.copied_pages), (1, 1));
    let c = Consumer::open(&format!("t-reg-{m}")).unwrap();
    let s = c.attach(2).unwrap();
    assert!(s.as_slice()[..PAGE].iter().all(|b| *b == 3));
    assert!(s.as_slice()[PAGE..2 * PAGE].iter().all(|b| *b == 4));
    drop(p);
    // The memory is the caller's again: still mapped, writable, same bytes.
    mem[off + PAGE] += 1;
    assert_eq!(mem[off + PAGE], 5);
    assert_eq!(mem[off], 3);
}
