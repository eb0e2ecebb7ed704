//! A small reader of ELF dynamic information: the `DT_NEEDED` entries of a
//! program (which MPI it links) and the names of a library's defined
//! dynamic symbols (which `mpi_f08` entry points MPICH exports).
//!
//! 64-bit little-endian files only (what MPI programs are on the machines
//! Remora runs on). It reads the section headers: `SHT_DYNAMIC` and
//! `SHT_DYNSYM` sections and the string tables their `sh_link` names. Every
//! offset and size is checked against the file; malformed input is an
//! error, never a panic. Shared by `build.rs` (through `#[path]`), so it
//! uses only `std`.

const SHT_DYNAMIC: u32 = 6;
const SHT_DYNSYM: u32 = 11;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const SECTION_HEADER_SIZE: usize = 64;
const DYN_SIZE: usize = 16;
const SYM_SIZE: usize = 24;

/// `len` bytes at `off`, or an error naming `what`.
fn bytes<'a>(data: &'a [u8], off: u64, len: u64, what: &str) -> Result<&'a [u8], String> {
    let start = usize::try_from(off).map_err(|_| format!("{what}: offset {off} too large"))?;
    let len = usize::try_from(len).map_err(|_| format!("{what}: size {len} too large"))?;
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| format!("{what}: bytes {off}+{len} lie outside the file"))
}

fn u16_at(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([d[off], d[off + 1]])
}

fn u32_at(d: &[u8], off: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&d[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(d: &[u8], off: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&d[off..off + 8]);
    u64::from_le_bytes(b)
}

/// One section header: type, link, file offset and size.
#[derive(Clone, Copy)]
struct Section {
    kind: u32,
    link: u32,
    offset: u64,
    size: u64,
}

/// The section headers of an ELF64 LE file.
fn sections(data: &[u8]) -> Result<Vec<Section>, String> {
    if !data.starts_with(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    let ident = bytes(data, 0, 64, "ELF header")?;
    if ident[4] != 2 || ident[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let shoff = u64_at(ident, 0x28);
    let shentsize = u16_at(ident, 0x3a) as usize;
    let shnum = u16_at(ident, 0x3c) as u64;
    if shnum == 0 {
        return Ok(Vec::new());
    }
    if shentsize < SECTION_HEADER_SIZE {
        return Err(format!(
            "section header size {shentsize} < {SECTION_HEADER_SIZE}"
        ));
    }
    let table = bytes(data, shoff, shnum * shentsize as u64, "section headers")?;
    Ok(table
        .chunks_exact(shentsize)
        .map(|h| Section {
            kind: u32_at(h, 4),
            link: u32_at(h, 0x28),
            offset: u64_at(h, 0x18),
            size: u64_at(h, 0x20),
        })
        .collect())
}

/// The string table section `link` names.
fn string_table<'a>(data: &'a [u8], secs: &[Section], link: u32) -> Result<&'a [u8], String> {
    let s = secs
        .get(link as usize)
        .ok_or_else(|| format!("string table section {link} does not exist"))?;
    bytes(data, s.offset, s.size, "string table")
}

/// The NUL-terminated string at `off` of `table`.
fn string_at(table: &[u8], off: u64) -> Result<String, String> {
    let rest = usize::try_from(off)
        .ok()
        .and_then(|o| table.get(o..))
        .ok_or_else(|| format!("string offset {off} outside its table"))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("string at {off} is not terminated"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The `DT_NEEDED` entries (sonames, in order) of an ELF64 LE file; empty
/// for a static program.
pub fn needed(data: &[u8]) -> Result<Vec<String>, String> {
    let secs = sections(data)?;
    let mut out = Vec::new();
    for s in secs.iter().filter(|s| s.kind == SHT_DYNAMIC) {
        let table = bytes(data, s.offset, s.size, "dynamic section")?;
        let strings = string_table(data, &secs, s.link)?;
        for entry in table.chunks_exact(DYN_SIZE) {
            match u64_at(entry, 0) {
                DT_NULL => break,
                DT_NEEDED => out.push(string_at(strings, u64_at(entry, 8))?),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The names of the symbols an ELF64 LE library defines in its dynamic
/// symbol table (`st_shndx` not `SHN_UNDEF`).
pub fn defined_dynamic_symbols(data: &[u8]) -> Result<Vec<String>, String> {
    let secs = sections(data)?;
    let mut out = Vec::new();
    for s in secs.iter().filter(|s| s.kind == SHT_DYNSYM) {
        let table = bytes(data, s.offset, s.size, "dynamic symbol table")?;
        let strings = string_table(data, &secs, s.link)?;
        for sym in table.chunks_exact(SYM_SIZE) {
            if u16_at(sym, 6) != 0 {
                out.push(string_at(strings, u64::from(u32_at(sym, 0)))?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_elf64_le() {
        assert!(needed(b"").is_err());
        assert!(needed(&[0u8; 64]).unwrap_err().contains("not an ELF"));
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 1; // 32-bit
        h[5] = 1;
        assert!(needed(&h).unwrap_err().contains("64-bit"));
    }

    #[test]
    fn section_table_outside_the_file_is_an_error() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        h[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        h[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        assert!(needed(&h).unwrap_err().contains("outside the file"));
    }

    #[test]
    fn reads_the_needed_libraries_of_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let libs = needed(&exe).unwrap();
        assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{libs:?}");
    }
}
