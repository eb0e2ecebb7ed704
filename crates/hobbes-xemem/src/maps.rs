//! `/proc/self/maps`: which parts of a range are mapped, readable, and
//! backed by which file, checked before `make` touches the range.

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub shared: bool,
    pub offset: u64,
    /// The file's device (major, minor); (0, 0) for anonymous memory.
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: String,
}

/// Parse one line: `start-end perms offset dev inode [path]`.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = fields.next()?.parse().ok()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        readable: perms.first() == Some(&b'r'),
        writable: perms.get(1) == Some(&b'w'),
        executable: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        offset,
        dev,
        inode,
        path,
    })
}

pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// This process's mappings.
pub fn current() -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/maps")?))
}

/// A piece of a range that lies in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    pub readable: bool,
}

/// The pieces of `[addr, addr+len)` in `maps` (sorted by address, as the
/// kernel lists them), or the first unmapped address.
pub fn cover(maps: &[Mapping], addr: usize, len: usize) -> Result<Vec<Piece>, usize> {
    let end = addr.checked_add(len).ok_or(addr)?;
    let mut at = addr;
    let mut pieces = Vec::new();
    for m in maps.iter().filter(|m| m.end > addr && m.start < end) {
        if m.start > at {
            return Err(at);
        }
        let stop = m.end.min(end);
        pieces.push(Piece {
            start: at,
            end: stop,
            readable: m.readable,
        });
        at = stop;
    }
    if at < end {
        return Err(at);
    }
    Ok(pieces)
}

/// True when `[addr, addr+len)` is exactly one shared mapping of the file
/// with `inode`, from its offset 0: a range this process already backs with
/// that memfd.
pub fn is_backed_by(maps: &[Mapping], addr: usize, len: usize, inode: u64) -> bool {
    let end = addr.saturating_add(len);
    let mut at = addr;
    for m in maps.iter().filter(|m| m.end > addr && m.start < end) {
        // Adjacent vmas of one file stay separate when their flags differ;
        // each must continue the file where the previous one stopped.
        if m.start > at
            || !m.shared
            || m.inode != inode
            || m.offset + (at - m.start) as u64 != (at - addr) as u64
        {
            return false;
        }
        at = m.end.min(end);
    }
    at >= end
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000004000 rw-s 00000000 00:01 4242                       /memfd:xemem (deleted)
7f0000004000-7f0000005000 ---p 00000000 00:00 0 
7f0000005000-7f0000008000 rw-p 00000000 00:00 0 
7f0000010000-7f0000012000 r--s 00002000 00:01 4242                       /memfd:xemem (deleted)
";

    #[test]
    fn parses_lines() {
        let maps = parse(MAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "[heap]");
        assert_eq!(
            maps[1],
            Mapping {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0000_4000,
                readable: true,
                writable: true,
                executable: false,
                shared: true,
                offset: 0,
                dev: (0, 1),
                inode: 4242,
                path: "/memfd:xemem (deleted)".into(),
            }
        );
        assert!(!maps[2].readable);
        assert_eq!(maps[2].path, "");
        assert_eq!(maps[4].offset, 0x2000);
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn covers_ranges_across_mappings() {
        let maps = parse(MAPS);
        let pieces = cover(&maps, 0x7f00_0000_2000, 0x5000).unwrap();
        assert_eq!(
            pieces,
            [
                Piece {
                    start: 0x7f00_0000_2000,
                    end: 0x7f00_0000_4000,
                    readable: true
                },
                Piece {
                    start: 0x7f00_0000_4000,
                    end: 0x7f00_0000_5000,
                    readable: false
                },
                Piece {
                    start: 0x7f00_0000_5000,
                    end: 0x7f00_0000_7000,
                    readable: true
                },
            ]
        );
        // A hole between 0x7f0000008000 and 0x7f0000010000.
        assert_eq!(
            cover(&maps, 0x7f00_0000_7000, 0x2000),
            Err(0x7f00_0000_8000)
        );
        assert_eq!(cover(&maps, 0x1000, 0x1000), Err(0x1000));
        assert_eq!(cover(&maps, usize::MAX - 10, 0x1000), Err(usize::MAX - 10));
    }

    #[test]
    fn recognises_memfd_backing() {
        let maps = parse(MAPS);
        assert!(is_backed_by(&maps, 0x7f00_0000_0000, 0x4000, 4242));
        assert!(!is_backed_by(&maps, 0x7f00_0000_0000, 0x4000, 7));
        // Runs past the shared mapping into private memory.
        assert!(!is_backed_by(&maps, 0x7f00_0000_0000, 0x5000, 4242));
        // Private anonymous memory.
        assert!(!is_backed_by(&maps, 0x7f00_0000_5000, 0x3000, 0));
        // Shared, right inode, but not from offset 0.
        assert!(!is_backed_by(&maps, 0x7f00_0001_0000, 0x2000, 4242));
    }
}
