//! Who has a segment attached, read from the kernel's own tables: the
//! mappings in `/proc/PID/maps` of each segment's file range, and for a
//! composite segment (whose versions share one pool) the shared flocks its
//! holders take on their copy of its table (`/proc/locks`). Files are named
//! by device and inode, as both tables name them: a memfd and a file in the
//! daemon's tmpfs (or any other file system) may share an inode number.

use std::collections::HashMap;

use hobbes_proto::model::{SegId, SegmentRecord};

/// Per segment, the processes attaching it and how many mappings (or
/// holds) each has, the owner left out.
pub type Attachers = HashMap<SegId, Vec<(u32, u32)>>;

/// Scan every process of the node for the attachers of `segments`, whose
/// files are on the devices `devices` gives (by segid; a segment the name
/// server holds no memory for is matched by inode alone).
pub fn scan(segments: &[SegmentRecord], devices: &HashMap<SegId, u64>) -> Attachers {
    let dev = |s: &SegmentRecord| devices.get(&s.segid).map(|&d| split_dev(d));
    let mut found = Attachers::new();
    let plain: Vec<&SegmentRecord> = segments.iter().filter(|s| s.composite.is_none()).collect();
    if !plain.is_empty() {
        for (pid, maps) in every_process_maps() {
            for m in file_mappings(&maps) {
                for s in plain.iter().filter(|s| maps_segment(&m, s, dev(s))) {
                    add(&mut found, s, pid);
                }
            }
        }
    }
    let composites: Vec<&SegmentRecord> =
        segments.iter().filter(|s| s.composite.is_some()).collect();
    if !composites.is_empty() {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        for (pid, device, inode) in shared_flocks(&locks) {
            let held = |s: &&&SegmentRecord| {
                s.backing_inode == inode && dev(s).is_none_or(|d| d == device)
            };
            for s in composites.iter().filter(held) {
                add(&mut found, s, pid);
            }
        }
    }
    found
}

fn add(found: &mut Attachers, s: &SegmentRecord, pid: u32) {
    if pid == s.owner_pid {
        return;
    }
    let list = found.entry(s.segid).or_default();
    match list.iter_mut().find(|(p, _)| *p == pid) {
        Some((_, n)) => *n += 1,
        None => list.push((pid, 1)),
    }
}

/// `(pid, contents of /proc/PID/maps)` of every process we can read.
fn every_process_maps() -> impl Iterator<Item = (u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
            Some((pid, maps))
        })
}

/// `(major, minor)` of a `st_dev`, as the kernel's tables print it.
fn split_dev(dev: u64) -> (u64, u64) {
    (u64::from(libc::major(dev)), u64::from(libc::minor(dev)))
}

/// `(major, minor)` from `maj:min` in hex, as in `/proc/PID/maps`.
fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.split_once(':')?;
    Some((
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
    ))
}

/// One mapping of a file: its device, inode and the file range it maps.
#[derive(Debug, PartialEq, Eq)]
struct FileMapping {
    dev: (u64, u64),
    inode: u64,
    offset: u64,
    len: u64,
}

/// The file mappings of one `/proc/PID/maps`, whose lines read
/// `7f..-7f.. rw-s 00002000 00:01 5678   /memfd:xemem (deleted)`
/// (anonymous mappings have inode 0 and are skipped).
fn file_mappings(maps: &str) -> impl Iterator<Item = FileMapping> + '_ {
    maps.lines().filter_map(|line| {
        let mut f = line.split_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let offset = u64::from_str_radix(f.nth(1)?, 16).ok()?;
        let dev = parse_dev(f.next()?)?;
        let inode = f.next()?.parse().ok().filter(|&i: &u64| i != 0)?;
        Some(FileMapping {
            dev,
            inode,
            offset,
            len: end.checked_sub(start)?,
        })
    })
}

/// Whether mapping `m` covers any byte of segment `s`, whose file is on
/// `dev` when known: the same file and an overlapping range (a segment that
/// is part of a larger file is attached only by mappings of its own part).
fn maps_segment(m: &FileMapping, s: &SegmentRecord, dev: Option<(u64, u64)>) -> bool {
    m.inode == s.backing_inode
        && dev.is_none_or(|d| d == m.dev)
        && m.offset < s.backing_offset + s.size
        && s.backing_offset < m.offset + m.len
}

/// `(pid, device, inode)` of each granted shared flock in /proc/locks, whose
/// lines read `1: FLOCK  ADVISORY  READ  1234 00:01:5678 0 EOF` (waiters
/// have `->`).
fn shared_flocks(text: &str) -> impl Iterator<Item = (u32, (u64, u64), u64)> + '_ {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" || f[3] != "READ" {
            return None;
        }
        let pid = f[4].parse().ok()?;
        let (dev, inode) = f[5].rsplit_once(':')?;
        Some((pid, parse_dev(dev)?, inode.parse().ok()?))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn shared_flocks_are_parsed_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  READ  1234 00:01:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 00:01:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 42 00:01:77 0 EOF\n\
                    3: POSIX  ADVISORY  READ  7 fd:00:123 0 EOF\n\
                    4: FLOCK  ADVISORY  READ  8 00:1a:90 0 EOF\n";
        let got: Vec<_> = shared_flocks(text).collect();
        assert_eq!(got, vec![(1234, (0, 1), 5678), (8, (0, 0x1a), 90)]);
    }

    #[test]
    fn file_mappings_give_device_inode_and_file_range() {
        let maps = "\
7f0000000000-7f0000002000 rw-s 00003000 00:01 5678                       /memfd:xemem (deleted)
7f0000004000-7f0000005000 r--p 00000000 08:01 1234                       /usr/lib/libc.so.6
7f0000006000-7f0000007000 r--s 00000000 00:2d 91                         /run/hobbes/shm/#91 (deleted)
7f0000008000-7f0000009000 rw-p 00000000 00:00 0                          [heap]
garbage line\n";
        let got: Vec<FileMapping> = file_mappings(maps).collect();
        assert_eq!(
            got,
            vec![
                FileMapping {
                    dev: (0, 1),
                    inode: 5678,
                    offset: 0x3000,
                    len: 0x2000
                },
                FileMapping {
                    dev: (8, 1),
                    inode: 1234,
                    offset: 0,
                    len: 0x1000
                },
                FileMapping {
                    dev: (0, 0x2d),
                    inode: 91,
                    offset: 0,
                    len: 0x1000
                },
            ]
        );
    }

    #[test]
    fn a_mapping_attaches_only_the_segments_whose_range_it_covers() {
        let seg = |offset: u64, size: u64| SegmentRecord {
            backing_inode: 7,
            backing_offset: offset,
            size,
            ..test_record()
        };
        let m = FileMapping {
            dev: (0, 1),
            inode: 7,
            offset: 0x2000,
            len: 0x2000,
        };
        let on = Some((0, 1));
        assert!(maps_segment(&m, &seg(0, 0x3000), on));
        assert!(maps_segment(&m, &seg(0x3000, 0x1000), on));
        assert!(maps_segment(&m, &seg(0x3000, 0x1000), None));
        assert!(!maps_segment(&m, &seg(0, 0x2000), on));
        assert!(!maps_segment(&m, &seg(0x4000, 0x1000), on));
        assert!(!maps_segment(&m, &seg(0x2000, 0x1000), Some((0, 0x2d))));
        assert!(!maps_segment(
            &FileMapping { inode: 8, ..m },
            &seg(0x2000, 0x1000),
            on
        ));
    }

    #[test]
    fn devices_split_as_the_kernel_prints_them() {
        assert_eq!(split_dev(0x2d), (0, 0x2d));
        assert_eq!(split_dev(0x801), (8, 1));
        // What fstat says of a file is what /proc/self/maps prints for it.
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&exe.metadata().unwrap());
        let ino = std::os::unix::fs::MetadataExt::ino(&exe.metadata().unwrap());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let printed = file_mappings(&maps).find(|m| m.inode == ino).unwrap();
        assert_eq!(printed.dev, split_dev(dev));
    }

    pub(in crate::daemon::xemem) fn test_record() -> SegmentRecord {
        SegmentRecord {
            segid: 1,
            name: None,
            size: 0,
            page_kind: hobbes_proto::model::PageKind::Base,
            mode: 0o600,
            owner_uid: 0,
            owner_gid: 0,
            owner_enclave: 0,
            owner_app: None,
            owner_pid: 1,
            owner_start_time: None,
            owner_fd: 3,
            owner_event_fd: None,
            owner_addr: 0,
            backing_inode: 0,
            backing_offset: 0,
            signalled: false,
            created_ms: 0,
            rev: 0,
            composite: None,
        }
    }
}
