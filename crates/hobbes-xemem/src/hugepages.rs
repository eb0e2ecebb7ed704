//! Which pages `alloc` backs a segment with: reserved hugetlb pages when
//! enough are free, else shmem transparent huge pages when the node enables
//! them for shmem, else base pages.

use crate::PageKind;

const MEMINFO: &str = "/proc/meminfo";
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
const PMD_SIZE: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
/// x86-64's PMD size, when the kernel does not say.
const DEFAULT_THP_SIZE: usize = 2 << 20;

/// Free default-size hugetlb pages and their size, from /proc/meminfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hugetlb {
    pub free: u64,
    pub page_size: usize,
}

pub fn parse_meminfo(text: &str) -> Option<Hugetlb> {
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let kib = field("Hugepagesize:")?;
    Some(Hugetlb {
        free: field("HugePages_Free:")?,
        page_size: usize::try_from(kib.checked_mul(1024)?).ok()?,
    })
}

/// True when the bracketed (selected) shmem THP policy lets a
/// `MADV_HUGEPAGE` shmem mapping use huge pages.
pub fn shmem_thp_enabled(text: &str) -> bool {
    let selected = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    matches!(
        selected,
        Some("always" | "within_size" | "advise" | "force")
    )
}

pub fn hugetlb() -> Option<Hugetlb> {
    parse_meminfo(&std::fs::read_to_string(MEMINFO).ok()?)
}

/// The default hugetlb page size (the one `MFD_HUGETLB` uses), if any.
pub fn hugetlb_page_size() -> Option<usize> {
    hugetlb().map(|h| h.page_size).filter(|s| *s > 0)
}

pub fn thp_size() -> usize {
    std::fs::read_to_string(PMD_SIZE)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|s: &usize| s.is_power_of_two())
        .unwrap_or(DEFAULT_THP_SIZE)
}

/// The kinds to try for `len` bytes, best first, with each one's page size.
/// Transparent huge pages when the node's shmem policy gives them to memfds
/// or when the daemon has its huge-page tmpfs (`huge_tmpfs`). Base pages
/// always come last.
pub fn candidates(len: usize, base_page: usize, huge_tmpfs: bool) -> Vec<(PageKind, usize)> {
    let mut out = Vec::new();
    if let Some(h) = hugetlb().filter(|h| h.page_size > 0) {
        let need = len.div_ceil(h.page_size) as u64;
        if h.free >= need {
            out.push((PageKind::Hugetlb, h.page_size));
        }
    }
    if (huge_tmpfs && len >= thp_size())
        || std::fs::read_to_string(SHMEM_ENABLED).is_ok_and(|s| shmem_thp_enabled(&s))
    {
        out.push((PageKind::Thp, thp_size()));
    }
    out.push((PageKind::Base, base_page));
    out
}

/// `len` rounded up to a multiple of `unit` (a power of two), or None on overflow.
pub fn round_up(len: usize, unit: usize) -> Option<usize> {
    Some(len.checked_add(unit - 1)? & !(unit - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:       16318284 kB\nHugePages_Total:      8\nHugePages_Free:       3\nHugePages_Rsvd:        0\nHugepagesize:       2048 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(Hugetlb {
                free: 3,
                page_size: 2 << 20
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn reads_shmem_policy() {
        assert!(shmem_thp_enabled(
            "always within_size [advise] never deny force\n"
        ));
        assert!(shmem_thp_enabled(
            "[always] within_size advise never deny force"
        ));
        assert!(shmem_thp_enabled(
            "always [within_size] advise never deny force"
        ));
        assert!(!shmem_thp_enabled(
            "always within_size advise [never] deny force"
        ));
        assert!(!shmem_thp_enabled(
            "always within_size advise never [deny] force"
        ));
        assert!(!shmem_thp_enabled(""));
    }

    #[test]
    fn rounds() {
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(4096, 4096), Some(4096));
        assert_eq!(round_up(4097, 2 << 20), Some(2 << 20));
        assert_eq!(round_up(usize::MAX, 4096), None);
    }

    #[test]
    fn the_daemons_tmpfs_offers_transparent_huge_pages_for_big_memory() {
        let c = candidates(4 << 20, 4096, true);
        assert!(c.iter().any(|(k, _)| *k == PageKind::Thp), "{c:?}");
        assert_eq!(c.last(), Some(&(PageKind::Base, 4096)));
    }

    #[test]
    fn base_pages_always_last() {
        let c = candidates(4096, 4096, false);
        assert_eq!(c.last(), Some(&(PageKind::Base, 4096)));
    }
}
