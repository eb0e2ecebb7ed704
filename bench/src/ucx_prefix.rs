//! Where `scripts/ucx-xpmem.sh` installs the rebuilt UCX, for `hobbes-bench
//! ucx` and the UCX tests (bench/tests/ucx.rs includes this file) alike.

use std::path::PathBuf;

/// `$HOBBES_UCX_PREFIX`, else `${HOBBES_CACHE:-/var/cache/hobbes}/ucx-xpmem/prefix`
/// (the script's own rule).
pub fn rebuilt_prefix() -> PathBuf {
    if let Some(p) = std::env::var_os("HOBBES_UCX_PREFIX").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("HOBBES_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hobbes"));
    cache.join("ucx-xpmem/prefix")
}
