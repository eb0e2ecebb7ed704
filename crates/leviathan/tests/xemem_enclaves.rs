//! XEMEM across two native enclaves (each its own PID namespace): processes
//! launched by leviathan export and attach segments with `xemem-probe`.

mod common;

use std::time::Duration;

use common::*;
use hobbes_client::proto::model::{AppRecord, AppState, ExitStatus};
use hobbes_client::{Client, NisReader};

/// `xemem-probe`, built by the workspace next to `leviathan`.
fn probe(test: &str) -> Option<String> {
    workspace_bin(test, "hobbes-xemem", "xemem-probe")
}

fn setup(test: &str) -> Option<(Daemon, Client, String)> {
    if !require_root(test) || ncpus() < 2 {
        if ncpus() < 2 {
            skip(test, "needs 2 cores");
        }
        return None;
    }
    let probe = probe(test)?;
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.create_enclave(spec("sim", 1, 512, false)).unwrap();
    c.create_enclave(spec("ana", 1, 512, true)).unwrap();
    Some((d, c, probe))
}

/// Start a probe in an enclave without waiting.
fn start(c: &mut Client, enclave: &str, argv: &[&str]) -> AppRecord {
    let mut l = launch(enclave, argv);
    l.stream = false;
    c.launch(l).unwrap()
}

fn run(c: &mut Client, enclave: &str, argv: &[&str]) -> (AppRecord, String, String) {
    run_in(c, enclave, argv)
}

fn wait_segment(nis: &NisReader, name: &str) {
    wait_for(&format!("segment {name}"), Duration::from_secs(10), || {
        nis.segment_by_name(name).unwrap()
    });
}

#[test]
fn share_across_enclaves_both_ways_without_copies() {
    let t = "share_across_enclaves_both_ways_without_copies";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    for (owner, attacher, name) in [("sim", "ana", "forward"), ("ana", "sim", "backward")] {
        // The owner exports 4 pages of plain private anonymous memory, converted in place,
        // and waits until the attacher signals that it wrote them.
        let o = start(
            &mut c,
            owner,
            &[
                &probe,
                "make",
                "--name",
                name,
                "--size",
                "16384",
                "--fill",
                "1",
                "--signalled",
                "--wait-signal",
                "--check",
                "2",
            ],
        );
        wait_segment(&nis, name);
        let seg = nis.segment_by_name(name).unwrap().unwrap();
        let owner_enclave = c
            .enclave(hobbes_client::proto::msg::EnclaveRef::Name(owner.into()))
            .unwrap();
        assert_eq!(
            seg.owner_enclave, owner_enclave.id,
            "the name server knows where the owner runs"
        );
        assert_eq!(seg.owner_app, Some(o.id));
        let (a, out, err) = run(
            &mut c,
            attacher,
            &[
                &probe, "attach", "--name", name, "--expect", "1", "--write", "2", "--signal",
            ],
        );
        assert_eq!(a.exit, Some(ExitStatus::Code(0)), "{out}{err}");
        let (o, _) = wait_ok(&mut c, &o);
        let out = std::fs::read_to_string(&o.stdout_log).unwrap();
        assert!(
            out.contains("CHECK OK"),
            "the owner sees the attacher's writes in its own memory: {out}"
        );
        wait_for("segment removed", Duration::from_secs(5), || {
            nis.segment_by_name(name).unwrap().is_none().then_some(())
        });
    }
}

/// A segment that is a range of a larger file (as a range of an LWK or VM
/// enclave's RAM file will be): attachers map exactly that range, not the
/// file's start; their mappings are counted as attachments of it alone;
/// writes land in the owner's file at the range's offset, guard pages
/// either side untouched; ranges past the segment are refused.
#[test]
fn a_range_of_a_larger_file_is_a_segment() {
    let t = "a_range_of_a_larger_file_is_a_segment";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let o = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "ram-range",
            "--size",
            "16384",
            "--fill",
            "1",
            "--file-range",
            "--signalled",
            "--wait-signal",
            "--check",
            "2",
        ],
    );
    wait_segment(&nis, "ram-range");
    let seg = nis.segment_by_name("ram-range").unwrap().unwrap();
    assert_eq!(seg.backing_offset, 4096, "{seg:?}");
    assert_eq!(seg.size, 16384);
    // A reader holds the whole range (every byte 1, none of the guards').
    let reader = start(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "ram-range",
            "--ro",
            "--expect",
            "1",
            "--hold-ms",
            "60000",
        ],
    );
    let info = wait_for("the reader's attachment", Duration::from_secs(10), || {
        c.xemem_list()
            .unwrap()
            .into_iter()
            .find(|s| s.record.segid == seg.segid && s.attachments > 0)
    });
    assert_eq!(info.attachments, 1, "{info:?}");
    c.kill_app(reader.id, 9).unwrap();
    c.wait_app(reader.id).unwrap();
    // Past the segment's end: refused, though the file goes on.
    let (a, out, err) = run(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "ram-range",
            "--offset",
            "12288",
            "--size",
            "8192",
        ],
    );
    assert_eq!(a.exit, Some(ExitStatus::Code(1)), "{out}{err}");
    assert!(err.contains("do not fit segment"), "{err}");
    // A writer: the owner sees its writes in the range, and only there.
    let (a, out, err) = run(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "ram-range",
            "--expect",
            "1",
            "--write",
            "2",
            "--signal",
        ],
    );
    assert_eq!(a.exit, Some(ExitStatus::Code(0)), "{out}{err}");
    let (o, _) = wait_ok(&mut c, &o);
    let out = std::fs::read_to_string(&o.stdout_log).unwrap();
    assert!(out.contains("CHECK OK"), "{out}");
}

/// Segments of 2 MiB and more get transparent huge pages from the daemon's
/// own tmpfs (`huge=within_size`), whatever the node's shmem policy says,
/// and attach across enclaves as before; the mount goes with the daemon.
/// An unprivileged daemon, which cannot mount, says it falls back to memfds.
#[test]
fn big_segments_get_huge_pages_from_the_daemons_tmpfs() {
    let t = "big_segments_get_huge_pages_from_the_daemons_tmpfs";
    let Some((mut d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let dir = c.status().unwrap().header.segment_files.dir;
    let dir = dir.expect("a privileged daemon mounts its huge-page tmpfs");
    assert_eq!(dir, d.state_dir().join("shm").display().to_string());
    let mounted = |dir: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(dir) && l.contains(" - tmpfs "))
    };
    assert!(mounted(&dir));
    let size = (4u64 << 20).to_string();
    let owner = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "big",
            "--size",
            &size,
            "--fill",
            "7",
            "--alloc",
            "--hold-ms",
            "60000",
        ],
    );
    wait_segment(&nis, "big");
    let seg = nis.segment_by_name("big").unwrap().unwrap();
    assert_eq!(seg.page_kind.to_string(), "thp", "{seg:?}");
    // The owner's memory is a file of the tmpfs, mapped with huge pages.
    let pid = owner.procs[0].global;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains(&format!("{dir}/")), "{maps}");
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let pmd_kb: u64 = rollup
        .lines()
        .find(|l| l.starts_with("ShmemPmdMapped:") || l.starts_with("FilePmdMapped:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(pmd_kb >= 2048, "huge pages mapped: {rollup}");
    // Attached from the other enclave, every byte as written.
    let (a, out, err) = run(
        &mut c,
        "ana",
        &[&probe, "attach", "--name", "big", "--ro", "--expect", "7"],
    );
    assert_eq!(a.exit, Some(ExitStatus::Code(0)), "{out}{err}");
    c.kill_app(owner.id, 9).unwrap();
    c.wait_app(owner.id).unwrap();
    assert_eq!(d.stop(), Some(0));
    assert!(!mounted(&dir), "the mount goes with the daemon");
    drop((c, d));

    let mut unprivileged = Daemon::start(&["--unprivileged"]);
    let files = unprivileged.client().status().unwrap().header.segment_files;
    assert_eq!(files.dir, None);
    assert!(
        files
            .fallback
            .as_deref()
            .is_some_and(|w| w.contains("unprivileged")),
        "{files:?}"
    );
    assert_eq!(unprivileged.stop(), Some(0));
}

/// `--hugepages N` adds N pages to the node's hugetlb reserve while the
/// daemon runs, `alloc` takes them first, and the reserve goes back to what
/// it was at a clean exit, and after a `kill -9` at the next start.
#[test]
fn hugepages_are_reserved_while_running_and_given_back() {
    let t = "hugepages_are_reserved_while_running_and_given_back";
    if !require_root(t) || ncpus() < 2 {
        if ncpus() < 2 {
            skip(t, "needs 2 cores");
        }
        return;
    }
    let Some(probe) = probe(t) else {
        return;
    };
    let reserve = || -> u64 {
        std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = reserve();
    let mut d = Daemon::start(&["--hugepages", "4"]);
    let mut c = d.client();
    let reserved = c.status().unwrap().header.segment_files.hugetlb_reserved;
    if reserved < 2 {
        skip(
            t,
            &format!("the kernel found only {reserved} hugetlb pages"),
        );
        return;
    }
    assert_eq!(reserve(), before + reserved);
    c.create_enclave(spec("sim", 1, 512, false)).unwrap();
    let size = (4u64 << 20).to_string();
    let owner = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "tlb",
            "--size",
            &size,
            "--alloc",
            "--hold-ms",
            "60000",
        ],
    );
    let nis = NisReader::open(d.nis_dir()).unwrap();
    wait_segment(&nis, "tlb");
    let seg = nis.segment_by_name("tlb").unwrap().unwrap();
    assert_eq!(seg.page_kind.to_string(), "hugetlb", "{seg:?}");
    c.kill_app(owner.id, 9).unwrap();
    c.wait_app(owner.id).unwrap();
    assert_eq!(d.stop(), Some(0));
    assert_eq!(reserve(), before, "given back at a clean exit");

    // Killed with pages reserved: the next start gives them back before it
    // reserves, and cleanup gives them back.
    d.spawn();
    d.kill9();
    assert_eq!(
        reserve(),
        before + reserved,
        "a killed daemon cannot give back"
    );
    d.spawn();
    assert_eq!(reserve(), before + reserved, "not reserved twice");
    d.kill9();
    let stdout = cleanup_ok(d.state_dir(), &[]);
    assert!(stdout.contains("gave back the hugetlb pages"), "{stdout}");
    assert_eq!(reserve(), before, "given back by cleanup");
}

#[test]
fn read_only_attachments_fault_on_write_and_permissions_are_checked() {
    let t = "read_only_attachments_fault_on_write_and_permissions_are_checked";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let owner = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "guarded",
            "--size",
            "8192",
            "--fill",
            "5",
            "--mode",
            "600",
            "--hold-ms",
            "60000",
        ],
    );
    wait_segment(&nis, "guarded");
    let (ro, out, err) = run(
        &mut c,
        "ana",
        &[
            &probe, "attach", "--name", "guarded", "--ro", "--expect", "5",
        ],
    );
    assert_eq!(ro.exit, Some(ExitStatus::Code(0)), "{out}{err}");
    let (bad, _, _) = run(
        &mut c,
        "ana",
        &[
            &probe, "attach", "--name", "guarded", "--ro", "--write", "9",
        ],
    );
    assert_eq!(bad.state, AppState::Crashed);
    assert_eq!(
        bad.exit,
        Some(ExitStatus::Signal(libc::SIGSEGV)),
        "writing a read-only attachment faults"
    );
    // Another uid, in the other enclave: mode 600 refuses it.
    let (denied, _, err) = run(
        &mut c,
        "ana",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &probe,
            "attach",
            "--name",
            "guarded",
            "--ro",
            "--retry-ms",
            "0",
        ],
    );
    assert_eq!(
        denied.exit,
        Some(ExitStatus::Code(2)),
        "permission denied: {err}"
    );
    assert!(err.contains("permission denied"), "{err}");
    let (_, out, _) = run(
        &mut c,
        "sim",
        &[&probe, "attach", "--name", "guarded", "--expect", "5"],
    );
    assert!(out.contains("ATTACH OK"), "its owner's uid may");
    c.kill_app(owner.id, libc::SIGTERM).unwrap();
}

#[test]
fn two_attachers_two_segments_and_owner_death() {
    let t = "two_attachers_two_segments_and_owner_death";
    let Some((d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let o1 = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "one",
            "--size",
            "4096",
            "--fill",
            "1",
            "--hold-ms",
            "60000",
        ],
    );
    let o2 = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "two",
            "--size",
            "8192",
            "--fill",
            "2",
            "--alloc",
            "--hold-ms",
            "60000",
        ],
    );
    wait_segment(&nis, "one");
    wait_segment(&nis, "two");
    // Two attachers hold "one"; one attacher holds "two".
    let a1 = start(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "one",
            "--expect",
            "1",
            "--hold-ms",
            "3000",
        ],
    );
    let a2 = start(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "one",
            "--expect",
            "1",
            "--hold-ms",
            "3000",
        ],
    );
    let a3 = start(
        &mut c,
        "sim",
        &[
            &probe,
            "attach",
            "--name",
            "two",
            "--expect",
            "2",
            "--hold-ms",
            "3000",
        ],
    );
    let counts = wait_for("attachments to show", Duration::from_secs(10), || {
        let list = c.xemem_list().unwrap();
        let n = |name: &str| {
            list.iter()
                .find(|s| s.record.name.as_deref() == Some(name))
                .map(|s| s.attachments)
                .unwrap_or(0)
        };
        (n("one") == 2 && n("two") == 1).then_some(list)
    });
    let named = counts.iter().filter(|s| s.record.name.is_some()).count();
    assert_eq!(named, 2, "{counts:?}");
    // An attacher killed while attached leaves no attachment behind.
    c.kill_app(a3.id, libc::SIGKILL).unwrap();
    wait_for(
        "the killed attacher's mapping to go",
        Duration::from_secs(5),
        || {
            let list = c.xemem_list().unwrap();
            list.iter()
                .find(|s| s.record.name.as_deref() == Some("two"))
                .filter(|s| s.attachments == 0)
                .map(|_| ())
        },
    );
    // The owner of "one" dies: its segment goes, the attachments stay valid.
    c.kill_app(o1.id, libc::SIGKILL).unwrap();
    wait_for("segment one removed", Duration::from_secs(5), || {
        nis.segment_by_name("one").unwrap().is_none().then_some(())
    });
    for a in [&a1, &a2] {
        wait_ok(&mut c, a);
    }
    assert!(
        nis.segment_by_name("two").unwrap().is_some(),
        "the other segment is untouched"
    );
    let list = c.xemem_list().unwrap();
    assert_eq!(
        list.iter().map(|s| s.attachments).sum::<u32>(),
        0,
        "detached and exited attachers left nothing behind"
    );
    c.kill_app(o2.id, libc::SIGTERM).unwrap();
}

#[test]
fn daemon_restart_keeps_live_attachments_and_segments() {
    let t = "daemon_restart_keeps_live_attachments_and_segments";
    let Some((mut d, mut c, probe)) = setup(t) else {
        return;
    };
    let nis = NisReader::open(d.nis_dir()).unwrap();
    let owner = start(
        &mut c,
        "sim",
        &[
            &probe,
            "make",
            "--name",
            "durable",
            "--size",
            "16384",
            "--fill",
            "3",
            "--signalled",
            "--wait-signal",
            "--check",
            "4",
        ],
    );
    wait_segment(&nis, "durable");
    let holder = start(
        &mut c,
        "ana",
        &[
            &probe,
            "attach",
            "--name",
            "durable",
            "--expect",
            "3",
            "--hold-ms",
            "3000",
        ],
    );
    wait_for("attached", Duration::from_secs(10), || {
        c.xemem_list()
            .unwrap()
            .first()
            .filter(|s| s.attachments == 1)
            .map(|_| ())
    });
    d.kill9();
    d.spawn();
    let mut c = d.client();
    let list = c.xemem_list().unwrap();
    assert_eq!(list.len(), 1, "the segment survived the restart");
    // A new attacher after the restart gets the same memory, writes it, and wakes the owner.
    let (a, out, err) = run(
        &mut c,
        "ana",
        &[
            &probe, "attach", "--name", "durable", "--expect", "3", "--write", "4", "--signal",
        ],
    );
    assert_eq!(a.exit, Some(ExitStatus::Code(0)), "{out}{err}");
    let (owner, _) = wait_ok(&mut c, &owner);
    assert!(std::fs::read_to_string(&owner.stdout_log)
        .unwrap()
        .contains("CHECK OK"));
    wait_ok(&mut c, &holder);
}
