//! cgroupfs look-alikes in a temporary directory, for the managers' unit
//! tests (no root, no cgroups needed), as youki's libcgroups and Firecracker's
//! jailer test theirs.
//!
//! [`DIR_OPS`] does what the kernel does on mkdir and rmdir: a new cgroup
//! comes with its control files (v1: those of its hierarchy's controllers;
//! v2: the core files plus those of the controllers its parent enables in
//! `cgroup.subtree_control`), and rmdir refuses (EBUSY) while the cgroup has
//! processes or children. Writes are plain file writes: a file holds what was
//! last written. Each directory records the files the "kernel" made, so
//! [`stray_files`] finds files the code created by writing where the kernel
//! has none (which on cgroupfs would have failed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::DirOps;

pub const DIR_OPS: DirOps = DirOps { mkdir, rmdir };

/// The list of kernel-made files in each fixture directory.
const MANIFEST: &str = ".fixture-kernel-files";

/// The v1 memory controller's "no limit".
const V1_NO_LIMIT: &str = "9223372036854771712";

fn populate(dir: &Path, files: &[(&str, String)]) -> io::Result<()> {
    let mut names = String::new();
    for (name, content) in files {
        fs::write(dir.join(name), content)?;
        names.push_str(name);
        names.push('\n');
    }
    fs::write(dir.join(MANIFEST), names)
}

/// v1 roots: a cpuset and a memory hierarchy with `cpus` and `mems`.
pub fn v1_root(cpuset: &Path, memory: &Path, cpus: &str, mems: &str) {
    fs::create_dir_all(cpuset).unwrap();
    fs::create_dir_all(memory).unwrap();
    populate(
        cpuset,
        &[
            ("cgroup.procs", String::new()),
            ("tasks", String::new()),
            ("cpuset.cpus", cpus.into()),
            ("cpuset.mems", mems.into()),
            ("cpuset.cpu_exclusive", "1".into()),
        ],
    )
    .unwrap();
    populate(
        memory,
        &[
            ("cgroup.procs", String::new()),
            ("tasks", String::new()),
            ("memory.limit_in_bytes", V1_NO_LIMIT.into()),
        ],
    )
    .unwrap();
}

/// A v2 root offering cpuset and memory, with `cpus` and `mems`.
pub fn v2_root(root: &Path, cpus: &str, mems: &str) {
    fs::create_dir_all(root).unwrap();
    populate(
        root,
        &[
            ("cgroup.procs", String::new()),
            ("cgroup.controllers", "cpuset cpu io memory pids".into()),
            ("cgroup.subtree_control", String::new()),
            ("cpuset.cpus.effective", cpus.into()),
            ("cpuset.mems.effective", mems.into()),
        ],
    )
    .unwrap();
}

/// mkdir on cgroupfs: the directory and its control files.
pub fn mkdir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    let parent = path.parent().expect("a cgroup has a parent");
    let mut files = vec![("cgroup.procs", String::new())];
    if parent.join("cgroup.subtree_control").exists() {
        // v2: what the parent enables for its children.
        let enabled: Vec<String> = fs::read_to_string(parent.join("cgroup.subtree_control"))?
            .split_whitespace()
            .filter_map(|c| c.strip_prefix('+').map(str::to_string))
            .collect();
        files.push(("cgroup.controllers", enabled.join(" ")));
        files.push(("cgroup.subtree_control", String::new()));
        files.push(("cgroup.kill", String::new()));
        files.push(("cgroup.events", "populated 0\nfrozen 0\n".into()));
        if enabled.iter().any(|c| c == "cpuset") {
            files.push(("cpuset.cpus", String::new()));
            files.push(("cpuset.mems", String::new()));
            files.push(("cpuset.cpus.partition", "member".into()));
        }
        if enabled.iter().any(|c| c == "memory") {
            files.push(("memory.max", "max".into()));
            files.push(("memory.current", "0".into()));
        }
    } else {
        // v1: the files of the hierarchy's controllers, as in the parent.
        files.push(("tasks", String::new()));
        if parent.join("cpuset.cpus").exists() {
            files.push(("cpuset.cpus", String::new()));
            files.push(("cpuset.mems", String::new()));
            files.push(("cpuset.cpu_exclusive", "0".into()));
        }
        if parent.join("memory.limit_in_bytes").exists() {
            files.push(("memory.limit_in_bytes", V1_NO_LIMIT.into()));
        }
    }
    populate(path, &files)
}

/// rmdir on cgroupfs: the control files go with the directory; EBUSY while
/// the cgroup has processes or child cgroups.
pub fn rmdir(path: &Path) -> io::Result<()> {
    if !path.is_dir() {
        return Err(io::ErrorKind::NotFound.into());
    }
    let has_children = fs::read_dir(path)?
        .flatten()
        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
    let busy = !super::procs(path).is_empty();
    if has_children || busy {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    fs::remove_dir_all(path)
}

/// A fixture file's content, trimmed.
pub fn read_file(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Files under `root` that the "kernel" did not make.
pub fn stray_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let made = fs::read_to_string(dir.join(MANIFEST)).unwrap_or_default();
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            } else if name != MANIFEST && !made.lines().any(|l| l == name) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}
