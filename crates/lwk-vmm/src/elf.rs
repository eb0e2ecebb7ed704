//! Parsing and loading the static x86-64 executables an LWK runs.
//!
//! [`parse`] checks a whole executable file up front and says, in one
//! sentence an operator can act on, why one cannot run (a 32-bit program, a
//! dynamically linked one, a shared library, a damaged file...); what it
//! accepts is a [`Program`]: its kind, entry point, loadable segments and
//! the facts the initial stack needs (`AT_PHDR`, `AT_PHNUM`...).
//! [`Program::load`] then lays the segments out in one buffer standing for
//! the link-time extent `[lo, hi)`: file bytes copied, everything else
//! (bss, gaps between segments) zeroed.
//!
//! Two kinds are accepted, as Linux's `execve` would run them without an
//! interpreter:
//! - [`ProgramKind::Exec`] (`ET_EXEC`, `-static`): runs at its link
//!   addresses; the load bias is 0.
//! - [`ProgramKind::StaticPie`] (`ET_DYN` with `DF_1_PIE` in `DT_FLAGS_1`,
//!   no `PT_INTERP`, `-static-pie`): runs at link address + a bias the caller
//!   chooses (a multiple of 2 MiB and of [`Program::max_align`]). We apply
//!   no relocation: a static-pie relocates itself at start-up, before
//!   anything else touches memory (glibc's `_dl_relocate_static_pie` finds
//!   its own load address PC-relatively through `__ehdr_start`/`_DYNAMIC`;
//!   musl's `_dlstart_c` takes `AT_BASE`, or when that is 0, as Linux passes
//!   it to a program without an interpreter, computes the bias from
//!   `AT_PHDR` and `PT_DYNAMIC`'s address). Its relocations are all
//!   relative (`R_X86_64_RELATIVE`/`IRELATIVE`, or `DT_RELR`): they need no
//!   symbol lookup, only the bias. The test
//!   `static_pie_relocations_are_all_relative_and_it_runs_at_a_kernel_chosen_base`
//!   checks both on a real binary. The caller passes `AT_PHDR = bias +
//!   phdr_vaddr`, `AT_ENTRY = bias + entry` and `AT_BASE = 0`.
//!
//! # Why the `object` crate
//!
//! We read the headers with `object::read::elf` (default features off: only
//! `read_core` and `elf`, so no compression crates come with it). Its
//! low-level reader is zero-copy and allocation-free: typed, endian-aware,
//! unaligned-safe views (`FileHeader64`, `ProgramHeader64`, `Dyn64`) over
//! the file's bytes with bounds-checked slicing, so a hostile count or
//! offset can make it return an error but never allocate or read out of
//! bounds; it is used by std's backtraces and fuzzed upstream. `goblin`'s
//! `Elf::parse` parses every table (sections, symbols, relocations) into
//! `Vec`s sized by counts read from the file, far more than a loader needs.
//! rust-vmm's `linux-loader` loads vmlinux kernels: it writes segments at
//! `p_paddr` (+ an offset) into `GuestMemory`, requires every `PT_LOAD` to
//! be 2 MiB-aligned (user programs have 4 KiB alignment), leaves bss
//! unzeroed and does not look at `ET_DYN`/`DF_1_PIE` or `PT_INTERP`: it does
//! not handle static-pie at a chosen base, nor give the refusals below.
//! The checks themselves (identity bytes, type, interpreter, segments) are
//! ours, so each refusal is its own [`ElfError`] variant.

use object::elf::{
    Dyn64, FileHeader64, ProgramHeader64, DF_1_PIE, DT_FLAGS_1, DT_NEEDED, DT_NULL, ELFCLASS32,
    ELFCLASS64, ELFDATA2LSB, ELFDATA2MSB, ELFMAG, EM_X86_64, ET_CORE, ET_DYN, ET_EXEC, ET_REL,
    PF_R, PF_W, PF_X, PN_XNUM, PT_GNU_STACK, PT_INTERP, PT_LOAD, PT_PHDR,
};
use object::read::elf::ProgramHeader as _;
use object::{LittleEndian as LE, ReadRef};

/// The page size segments are laid out with; `lo` and `hi` are multiples.
pub const PAGE_SIZE: u64 = 4096;

/// The end of the user half of the x86-64 address space (47 bits with
/// 4-level paging): no segment may reach above it.
pub const USER_ADDRESS_END: u64 = 1 << 47;

/// The largest image [`parse`] accepts: 64 GiB. The enclave's memory is
/// checked separately by the caller; this bound only keeps absurd files
/// from reaching it.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;

/// The largest segment alignment accepted: 1 GiB (a huge page). A larger
/// `p_align` would make the caller's choice of bias impossible.
pub const MAX_SEGMENT_ALIGN: u64 = 1 << 30;

/// The size of one 64-bit program header.
const PHDR_SIZE: u64 = std::mem::size_of::<ProgramHeader64<LE>>() as u64;

/// The longest interpreter name quoted in an error message.
const MAX_QUOTED: usize = 256;

/// How a program is placed in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// `ET_EXEC`: runs at its link-time addresses (load bias 0).
    Exec,
    /// A static position-independent executable (`ET_DYN` with `DF_1_PIE`,
    /// no interpreter): runs at link address + a bias the caller chooses,
    /// and relocates itself.
    StaticPie,
}

/// One `PT_LOAD` segment, at link-time addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Its first address (`p_vaddr`).
    pub vaddr: u64,
    /// Its size in memory (`p_memsz`); the bytes past `file_size` are zero
    /// (bss).
    pub mem_size: u64,
    /// Where its bytes start in the file (`p_offset`).
    pub file_offset: u64,
    /// How many of its bytes come from the file (`p_filesz`, at most
    /// `mem_size`).
    pub file_size: u64,
    /// `PF_R`: the program may read it.
    pub readable: bool,
    /// `PF_W`: the program may write it.
    pub writable: bool,
    /// `PF_X`: the program may execute it.
    pub executable: bool,
}

/// An executable [`parse`] accepted: everything needed to load and start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// How it is placed in memory.
    pub kind: ProgramKind,
    /// The entry point, at its link-time address (add the bias for a
    /// static-pie). Always inside an executable segment.
    pub entry: u64,
    /// Its `PT_LOAD` segments with a non-zero memory size, in program header
    /// order (ascending addresses in every linker output),
    /// none overlapping another.
    pub segments: Vec<LoadSegment>,
    /// The link-time address of the program headers as loaded in memory
    /// (`PT_PHDR`, or the `PT_LOAD` that covers `e_phoff`): `AT_PHDR` is
    /// this plus the bias.
    pub phdr_vaddr: u64,
    /// The number of program headers (`AT_PHNUM`).
    pub phnum: u16,
    /// The size of one program header (`AT_PHENT`); always 56.
    pub phentsize: u16,
    /// The start of the image: the lowest segment address rounded down to a
    /// page (4 KiB).
    pub lo: u64,
    /// The end of the image: the highest segment end rounded up to a page.
    pub hi: u64,
    /// The largest `p_align` of the `PT_LOAD`s, at least a page: a
    /// static-pie's bias must be a multiple of it.
    pub max_align: u64,
    /// Whether the stack must be executable (`PT_GNU_STACK` with `PF_X`).
    /// Without `PT_GNU_STACK` it is not: Linux has not made 64-bit stacks
    /// executable by default since 5.8.
    pub exec_stack: bool,
}

/// A part of an ELF file that may be cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The 64-byte ELF file header.
    Header,
    /// Program header number N (counting from 0).
    ProgramHeader(u16),
    /// The file bytes of the segment described by program header number N.
    SegmentBytes(u16),
    /// The dynamic section (`PT_DYNAMIC`), described by program header N.
    Dynamic(u16),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Header => write!(f, "the ELF header"),
            Part::ProgramHeader(n) => write!(f, "program header {n}"),
            Part::SegmentBytes(n) => write!(f, "the bytes of segment {n} (program header {n})"),
            Part::Dynamic(n) => write!(f, "the dynamic section (program header {n})"),
        }
    }
}

/// What kind of non-executable ELF file was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotExecutableKind {
    /// `ET_REL`: an object file (`cc -c`).
    Relocatable,
    /// `ET_CORE`: a core dump.
    Core,
    /// `ET_DYN` without `DF_1_PIE` in `DT_FLAGS_1` and without an
    /// interpreter: a shared library.
    SharedLibrary,
    /// Any other `e_type`.
    Other(u16),
}

impl std::fmt::Display for NotExecutableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotExecutableKind::Relocatable => write!(
                f,
                "a relocatable object file (ET_REL), not an executable: link it with -static (or -static-pie)"
            ),
            NotExecutableKind::Core => write!(f, "a core dump (ET_CORE), not an executable"),
            NotExecutableKind::SharedLibrary => write!(
                f,
                "a shared library (ET_DYN without DF_1_PIE in DT_FLAGS_1), not an executable: link a program with -static (or -static-pie)"
            ),
            NotExecutableKind::Other(t) => {
                write!(f, "an ELF file of type {t:#x}, neither an executable nor a library")
            }
        }
    }
}

/// What is wrong with one `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentProblem {
    /// `p_filesz > p_memsz`.
    FileLargerThanMemory {
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// `p_offset + p_filesz` overflows 64 bits.
    FileRangeOverflows {
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        file_size: u64,
    },
    /// `p_vaddr + p_memsz` overflows 64 bits.
    AddressOverflows {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// The segment ends above the 47-bit user half.
    AboveUserSpace {
        /// `p_vaddr + p_memsz`.
        end: u64,
    },
    /// `p_align` is not a power of two.
    AlignNotPowerOfTwo {
        /// `p_align`.
        align: u64,
    },
    /// `p_align` is above [`MAX_SEGMENT_ALIGN`].
    AlignTooLarge {
        /// `p_align`.
        align: u64,
    },
    /// `p_vaddr % p_align != p_offset % p_align`.
    Misaligned {
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_offset`.
        offset: u64,
        /// `p_align`.
        align: u64,
    },
    /// Its memory range overlaps that of another `PT_LOAD`.
    Overlaps {
        /// The other segment's program header number.
        other: u16,
    },
}

impl std::fmt::Display for SegmentProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            SegmentProblem::FileLargerThanMemory { file_size, mem_size } => write!(
                f,
                "has more bytes in the file ({file_size:#x}) than in memory ({mem_size:#x})"
            ),
            SegmentProblem::FileRangeOverflows { offset, file_size } => write!(
                f,
                "has a file range (offset {offset:#x} + {file_size:#x} bytes) past 2^64"
            ),
            SegmentProblem::AddressOverflows { vaddr, mem_size } => write!(
                f,
                "has an address range ({vaddr:#x} + {mem_size:#x} bytes) past 2^64"
            ),
            SegmentProblem::AboveUserSpace { end } => write!(
                f,
                "ends at {end:#x}, above the 47-bit user half of the address space ({USER_ADDRESS_END:#x})"
            ),
            SegmentProblem::AlignNotPowerOfTwo { align } => {
                write!(f, "has alignment {align:#x}, which is not a power of two")
            }
            SegmentProblem::AlignTooLarge { align } => write!(
                f,
                "has alignment {align:#x}, above the largest accepted ({MAX_SEGMENT_ALIGN:#x}, 1 GiB)"
            ),
            SegmentProblem::Misaligned { vaddr, offset, align } => write!(
                f,
                "has address {vaddr:#x} and file offset {offset:#x}, which differ modulo its alignment {align:#x}"
            ),
            SegmentProblem::Overlaps { other } => {
                write!(f, "overlaps segment {other} in memory")
            }
        }
    }
}

/// Why a file cannot run in an LWK enclave (from [`parse`]), or cannot be
/// loaded as asked (from [`Program::load`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The file does not start with the ELF magic `\x7fELF`.
    #[error("not an ELF file: {found}; an LWK enclave runs static x86-64 Linux executables")]
    NotElf {
        /// What the file looks like instead (a script, text, its first bytes).
        found: String,
    },
    /// The file ends inside a part it declares.
    #[error("the file is truncated: it ends at {file_len} bytes, before the end of {part}")]
    Truncated {
        /// What was cut.
        part: Part,
        /// The file's length.
        file_len: u64,
    },
    /// `ELFCLASS32`.
    #[error("a 32-bit executable (ELFCLASS32); an LWK enclave runs 64-bit x86-64 programs")]
    Class32,
    /// `ELFDATA2MSB`.
    #[error(
        "a big-endian ELF file (ELFDATA2MSB); an LWK enclave runs little-endian x86-64 programs"
    )]
    BigEndian,
    /// An identity byte (class, data encoding) that no ELF file has.
    #[error("a damaged ELF header: its {field} is {value}, which no ELF file has")]
    BadIdent {
        /// The field: `EI_CLASS` or `EI_DATA`.
        field: &'static str,
        /// Its value.
        value: u8,
    },
    /// `e_machine` is not `EM_X86_64`.
    #[error("built for {} (e_machine {machine}); an LWK enclave runs x86-64 programs", machine_name(*machine))]
    WrongMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// An object file, core dump, shared library or other non-executable.
    #[error("{kind}")]
    NotExecutable {
        /// Which kind of file.
        kind: NotExecutableKind,
    },
    /// It has `PT_INTERP`.
    #[error("dynamically linked (it asks for the program interpreter {interpreter}); an LWK enclave runs static executables only: link it with -static (or -static-pie)")]
    Dynamic {
        /// The interpreter it names (e.g. `/lib64/ld-linux-x86-64.so.2`).
        interpreter: String,
    },
    /// It has `DT_NEEDED` entries but no interpreter to load them.
    #[error("it needs {count} shared librar{} (DT_NEEDED) but names no program interpreter to load them; link it with -static (or -static-pie)", if *count == 1 { "y" } else { "ies" })]
    NeedsLibraries {
        /// The number of `DT_NEEDED` entries.
        count: usize,
    },
    /// `e_phentsize` is not 56.
    #[error("a damaged ELF header: program headers are {phentsize} bytes each, not 56 as in every 64-bit ELF file")]
    BadPhentsize {
        /// `e_phentsize`.
        phentsize: u16,
    },
    /// `e_phnum` is `PN_XNUM` (the count is in section header 0): no real
    /// executable has 65535 program headers.
    #[error("it declares 65535 or more program headers (PN_XNUM); no executable has that many")]
    TooManyProgramHeaders,
    /// No `PT_LOAD` with a non-zero memory size.
    #[error("it has no loadable segment (PT_LOAD): there is nothing to run")]
    NoLoadSegment,
    /// One `PT_LOAD` is malformed.
    #[error("segment {index} (program header {index}, PT_LOAD) {problem}")]
    BadSegment {
        /// Its program header number.
        index: u16,
        /// What is wrong.
        problem: SegmentProblem,
    },
    /// The entry point is outside every executable segment.
    #[error("its entry point {entry:#x} is in no executable segment: the file is damaged")]
    EntryNotExecutable {
        /// `e_entry`.
        entry: u64,
    },
    /// Neither `PT_PHDR` nor any `PT_LOAD` puts the program headers in
    /// memory, where static libc looks for them (`AT_PHDR`).
    #[error("its program headers are in no loaded segment (no PT_PHDR, no PT_LOAD covering e_phoff), so its C library could not find them through AT_PHDR; relink it with a standard linker script")]
    PhdrsNotLoaded,
    /// The image spans more than [`MAX_IMAGE_BYTES`].
    #[error("its memory image spans {bytes} bytes ({} GiB); at most {MAX_IMAGE_BYTES} (64 GiB)", bytes >> 30)]
    TooLarge {
        /// `hi - lo`.
        bytes: u64,
    },
    /// [`Program::load`] got a buffer of the wrong size (a caller bug).
    #[error("the image buffer is {actual} bytes; this program's image needs exactly {expected} (hi - lo)")]
    DestinationSize {
        /// [`Program::image_bytes`].
        expected: u64,
        /// The buffer's length.
        actual: u64,
    },
    /// [`Program::load`] found a segment that does not fit the file or the
    /// image it was given (a caller bug: not the file the program was
    /// parsed from, or a `Program` edited by hand).
    #[error(
        "segment {segment} of the parsed program {what}: is this the file it was parsed from?"
    )]
    LoadMismatch {
        /// Its position in [`Program::segments`].
        segment: usize,
        /// What does not fit.
        what: &'static str,
    },
}

/// The name of an `e_machine` value, for messages.
fn machine_name(machine: u16) -> String {
    let name = match machine {
        0 => "no machine (EM_NONE)",
        2 => "SPARC",
        3 => "32-bit x86 (i386)",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "64-bit PowerPC",
        22 => "s390x",
        40 => "32-bit Arm",
        43 => "SPARC v9",
        50 => "IA-64 (Itanium)",
        62 => "x86-64",
        183 => "aarch64",
        243 => "RISC-V",
        247 => "eBPF",
        258 => "LoongArch",
        _ => return format!("machine number {machine}"),
    };
    name.to_string()
}

/// Describes a file that is not ELF, for [`ElfError::NotElf`].
fn describe_non_elf(file: &[u8]) -> String {
    if file.is_empty() {
        return "the file is empty".to_string();
    }
    let head = &file[..file.len().min(80)];
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    if head.starts_with(b"#!") {
        return format!(
            "a script ({}); give the interpreter's path as the program instead",
            String::from_utf8_lossy(first_line).trim_end()
        );
    }
    let texty = |b: &u8| b.is_ascii_graphic() || b.is_ascii_whitespace();
    if head.iter().all(texty) {
        return format!(
            "a text file (it starts with {:?})",
            String::from_utf8_lossy(first_line).trim_end()
        );
    }
    let bytes: Vec<String> = file.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!(
        "it starts with the bytes {}, not the ELF magic 7f 45 4c 46",
        bytes.join(" ")
    )
}

/// Checks an executable file and describes how to load it.
///
/// Accepts a static x86-64 executable (`ET_EXEC`) or static-pie; refuses
/// anything else with an [`ElfError`] that names the reason. Never panics,
/// whatever the bytes; allocates only in proportion to the number of
/// program headers actually present in the file.
pub fn parse(file: &[u8]) -> Result<Program, ElfError> {
    let header = identify(file)?;
    let phdrs = program_headers(file, header)?;
    let phnum = header.e_phnum.get(LE);
    let kind = linking(file, header, phdrs)?;

    let layout = load_segments(file, phdrs)?;
    let (lo, hi) = (layout.lo, layout.hi);
    if hi - lo > MAX_IMAGE_BYTES {
        return Err(ElfError::TooLarge { bytes: hi - lo });
    }

    let entry = header.e_entry.get(LE);
    let in_code =
        |s: &LoadSegment| s.executable && entry >= s.vaddr && entry - s.vaddr < s.mem_size;
    if !layout.segments.iter().any(in_code) {
        return Err(ElfError::EntryNotExecutable { entry });
    }

    let phoff = header.e_phoff.get(LE);
    let table_bytes = u64::from(phnum) * PHDR_SIZE;
    let phdr_vaddr = phdrs_in_memory(phdrs, &layout.segments, phoff, table_bytes)
        .ok_or(ElfError::PhdrsNotLoaded)?;

    let exec_stack = phdrs
        .iter()
        .any(|ph| ph.p_type(LE) == PT_GNU_STACK && ph.p_flags(LE) & PF_X != 0);

    Ok(Program {
        kind,
        entry,
        segments: layout.segments,
        phdr_vaddr,
        phnum,
        phentsize: PHDR_SIZE as u16,
        lo,
        hi,
        max_align: layout.max_align,
        exec_stack,
    })
}

/// The ELF header of a 64-bit little-endian x86-64 executable or shared
/// object; anything else is refused, named as precisely as its first bytes
/// allow.
fn identify(file: &[u8]) -> Result<&FileHeader64<LE>, ElfError> {
    let file_len = file.len() as u64;
    let truncated = ElfError::Truncated {
        part: Part::Header,
        file_len,
    };
    // Identity first, so that a 32-bit or big-endian file is named as such
    // rather than as a short or odd 64-bit header.
    if !file.starts_with(&ELFMAG) {
        if !file.is_empty() && ELFMAG.starts_with(file) {
            return Err(truncated);
        }
        return Err(ElfError::NotElf {
            found: describe_non_elf(file),
        });
    }
    match file.get(4) {
        None => return Err(truncated),
        Some(&ELFCLASS64) => {}
        Some(&ELFCLASS32) => return Err(ElfError::Class32),
        Some(&value) => {
            return Err(ElfError::BadIdent {
                field: "EI_CLASS",
                value,
            })
        }
    }
    match file.get(5) {
        None => return Err(truncated),
        Some(&ELFDATA2LSB) => {}
        Some(&ELFDATA2MSB) => return Err(ElfError::BigEndian),
        Some(&value) => {
            return Err(ElfError::BadIdent {
                field: "EI_DATA",
                value,
            })
        }
    }
    let header: &FileHeader64<LE> = file.read_at(0).map_err(|()| truncated)?;
    let machine = header.e_machine.get(LE);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine });
    }
    let kind = match header.e_type.get(LE) {
        ET_EXEC | ET_DYN => return Ok(header),
        ET_REL => NotExecutableKind::Relocatable,
        ET_CORE => NotExecutableKind::Core,
        other => NotExecutableKind::Other(other),
    };
    Err(ElfError::NotExecutable { kind })
}

/// Static or not: `PT_INTERP` means dynamically linked; then the dynamic
/// section tells a static-pie (`DF_1_PIE`) from a shared library, or from a
/// program that needs libraries without naming a loader.
fn linking(
    file: &[u8],
    header: &FileHeader64<LE>,
    phdrs: &[ProgramHeader64<LE>],
) -> Result<ProgramKind, ElfError> {
    if let Some(ph) = phdrs.iter().find(|ph| ph.p_type(LE) == PT_INTERP) {
        return Err(ElfError::Dynamic {
            interpreter: interpreter_name(ph.data(LE, file).ok()),
        });
    }
    let mut pie = false;
    for (index, ph) in phdrs.iter().enumerate() {
        let index = index as u16; // phdrs.len() <= phnum, a u16
        let Some(dynamic) = ph.dynamic(LE, file).map_err(|_| ElfError::Truncated {
            part: Part::Dynamic(index),
            file_len: file.len() as u64,
        })?
        else {
            continue;
        };
        let (needed, flags_1) = scan_dynamic(dynamic);
        if needed > 0 {
            return Err(ElfError::NeedsLibraries { count: needed });
        }
        pie |= flags_1 & u64::from(DF_1_PIE) != 0;
    }
    match header.e_type.get(LE) {
        ET_EXEC => Ok(ProgramKind::Exec),
        _ if pie => Ok(ProgramKind::StaticPie),
        _ => Err(ElfError::NotExecutable {
            kind: NotExecutableKind::SharedLibrary,
        }),
    }
}

/// The program header table, bounds-checked header by header so that a cut
/// names the first header cut.
fn program_headers<'a>(
    file: &'a [u8],
    header: &FileHeader64<LE>,
) -> Result<&'a [ProgramHeader64<LE>], ElfError> {
    let file_len = file.len() as u64;
    let phnum = header.e_phnum.get(LE);
    if phnum == PN_XNUM {
        return Err(ElfError::TooManyProgramHeaders);
    }
    let phentsize = header.e_phentsize.get(LE);
    if phnum == 0 {
        return Err(ElfError::NoLoadSegment);
    }
    if u64::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::BadPhentsize { phentsize });
    }
    let phoff = header.e_phoff.get(LE);
    // The first header that does not fit: none of them if the offset is
    // already past the end.
    let fitting = file_len
        .checked_sub(phoff)
        .map_or(0, |room| room / PHDR_SIZE);
    if fitting < u64::from(phnum) {
        return Err(ElfError::Truncated {
            part: Part::ProgramHeader(fitting as u16), // < phnum, a u16
            file_len,
        });
    }
    // All phnum headers fit, so this cannot fail; map it anyway.
    file.read_slice_at(phoff, usize::from(phnum))
        .map_err(|()| ElfError::Truncated {
            part: Part::ProgramHeader(0),
            file_len,
        })
}

/// The interpreter's name for [`ElfError::Dynamic`], cut to a sane length.
fn interpreter_name(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "(its name is cut off by the end of the file)".to_string();
    };
    let name = bytes.split(|&b| b == 0).next().unwrap_or(bytes);
    let shown = &name[..name.len().min(MAX_QUOTED)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if name.len() > MAX_QUOTED {
        text.push_str("...");
    }
    text
}

/// The number of `DT_NEEDED` entries and the value of `DT_FLAGS_1` (0 when
/// absent), up to `DT_NULL`.
fn scan_dynamic(dynamic: &[Dyn64<LE>]) -> (usize, u64) {
    let (mut needed, mut flags_1) = (0, 0);
    for d in dynamic {
        let tag = d.d_tag.get(LE);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed += 1,
            DT_FLAGS_1 => flags_1 = d.d_val.get(LE),
            _ => {}
        }
    }
    (needed, flags_1)
}

/// The checked `PT_LOAD`s and their extent.
struct Layout {
    segments: Vec<LoadSegment>,
    lo: u64,
    hi: u64,
    max_align: u64,
}

/// Checks every `PT_LOAD` on its own, then that none overlaps another, and
/// computes the page-aligned extent.
fn load_segments(file: &[u8], phdrs: &[ProgramHeader64<LE>]) -> Result<Layout, ElfError> {
    let file_len = file.len() as u64;
    // Bounded by the number of headers in the file (at most 65534).
    let mut segments = Vec::new();
    let mut indices = Vec::new();
    let mut max_align = PAGE_SIZE;
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type(LE) != PT_LOAD {
            continue;
        }
        let index = index as u16; // phdrs.len() <= phnum, a u16
        let bad = |problem| ElfError::BadSegment { index, problem };
        let (vaddr, mem_size) = (ph.p_vaddr(LE), ph.p_memsz(LE));
        let (offset, file_size) = (ph.p_offset(LE), ph.p_filesz(LE));
        let align = ph.p_align(LE);
        if file_size > mem_size {
            return Err(bad(SegmentProblem::FileLargerThanMemory {
                file_size,
                mem_size,
            }));
        }
        let file_end =
            offset
                .checked_add(file_size)
                .ok_or(bad(SegmentProblem::FileRangeOverflows {
                    offset,
                    file_size,
                }))?;
        if file_end > file_len {
            return Err(ElfError::Truncated {
                part: Part::SegmentBytes(index),
                file_len,
            });
        }
        let end = vaddr
            .checked_add(mem_size)
            .ok_or(bad(SegmentProblem::AddressOverflows { vaddr, mem_size }))?;
        if end > USER_ADDRESS_END {
            return Err(bad(SegmentProblem::AboveUserSpace { end }));
        }
        // p_align 0 and 1 both mean "no constraint".
        if align > 1 {
            if !align.is_power_of_two() {
                return Err(bad(SegmentProblem::AlignNotPowerOfTwo { align }));
            }
            if align > MAX_SEGMENT_ALIGN {
                return Err(bad(SegmentProblem::AlignTooLarge { align }));
            }
            if vaddr % align != offset % align {
                return Err(bad(SegmentProblem::Misaligned {
                    vaddr,
                    offset,
                    align,
                }));
            }
            max_align = max_align.max(align);
        }
        if mem_size == 0 {
            continue; // nothing to load; and it must not stretch the extent
        }
        let flags = ph.p_flags(LE);
        segments.push(LoadSegment {
            vaddr,
            mem_size,
            file_offset: offset,
            file_size,
            readable: flags & PF_R != 0,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        });
        indices.push(index);
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegment);
    }

    // Overlap: sort by address; each must end before the next begins.
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| segments[i].vaddr);
    for pair in order.windows(2) {
        let (a, b) = (&segments[pair[0]], &segments[pair[1]]);
        if a.vaddr + a.mem_size > b.vaddr {
            let (first, second) = (indices[pair[0]], indices[pair[1]]);
            return Err(ElfError::BadSegment {
                index: first.max(second),
                problem: SegmentProblem::Overlaps {
                    other: first.min(second),
                },
            });
        }
    }

    let lo = segments.iter().map(|s| s.vaddr).min().unwrap_or(0) & !(PAGE_SIZE - 1);
    let end = segments
        .iter()
        .map(|s| s.vaddr + s.mem_size)
        .max()
        .unwrap_or(0);
    // end <= 2^47, so rounding up cannot overflow.
    let hi = end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    Ok(Layout {
        segments,
        lo,
        hi,
        max_align,
    })
}

/// Where the program headers are in memory, at link time: `PT_PHDR`'s
/// address if a loaded segment holds the whole table there, else the
/// address of file offset `phoff` in the `PT_LOAD` whose file bytes hold the
/// whole table (what Linux passes as `AT_PHDR`).
fn phdrs_in_memory(
    phdrs: &[ProgramHeader64<LE>],
    segments: &[LoadSegment],
    phoff: u64,
    table_bytes: u64,
) -> Option<u64> {
    let loaded_at = |vaddr: u64| {
        segments.iter().any(|s| {
            vaddr >= s.vaddr
                && vaddr
                    .checked_add(table_bytes)
                    .is_some_and(|end| end <= s.vaddr + s.file_size)
        })
    };
    if let Some(ph) = phdrs.iter().find(|ph| ph.p_type(LE) == PT_PHDR) {
        let vaddr = ph.p_vaddr(LE);
        if loaded_at(vaddr) {
            return Some(vaddr);
        }
    }
    segments.iter().find_map(|s| {
        let within = phoff >= s.file_offset
            && phoff
                .checked_add(table_bytes)
                .is_some_and(|end| end <= s.file_offset + s.file_size);
        within.then(|| s.vaddr + (phoff - s.file_offset))
    })
}

impl Program {
    /// The size of the image: `hi - lo` bytes.
    pub fn image_bytes(&self) -> u64 {
        self.hi.saturating_sub(self.lo)
    }

    /// Lays the program out in `dst`, which stands for the link-time
    /// addresses `[lo, hi)` and must be exactly [`image_bytes`] long: each
    /// segment's file bytes at `vaddr - lo`, every other byte zero (bss and
    /// the gaps between segments; `dst` may hold anything before). `file`
    /// must be the file this program was parsed from. Applies no relocation
    /// (see the module documentation). Never panics.
    ///
    /// [`image_bytes`]: Program::image_bytes
    pub fn load(&self, file: &[u8], dst: &mut [u8]) -> Result<(), ElfError> {
        let expected = self.image_bytes();
        if dst.len() as u64 != expected || self.lo > self.hi {
            return Err(ElfError::DestinationSize {
                expected,
                actual: dst.len() as u64,
            });
        }
        // Check every segment before writing anything, so that an error
        // leaves `dst` as it was; then fill in address order, zeroing the
        // gaps as we go rather than the whole buffer first (images can be
        // large and the bytes from the file are then written only once).
        let mut placed = Vec::with_capacity(self.segments.len());
        for (i, s) in self.segments.iter().enumerate() {
            let mismatch = |what| ElfError::LoadMismatch { segment: i, what };
            let start = s
                .vaddr
                .checked_sub(self.lo)
                .ok_or(mismatch("starts below the image"))?;
            let end = start
                .checked_add(s.mem_size)
                .filter(|&end| end <= expected)
                .ok_or(mismatch("ends past the image"))?;
            if s.file_size > s.mem_size {
                return Err(mismatch("has more file bytes than memory bytes"));
            }
            let bytes = s
                .file_offset
                .checked_add(s.file_size)
                .and_then(|file_end| file.get(s.file_offset as usize..file_end as usize))
                .ok_or(mismatch("has file bytes past the end of the file"))?;
            placed.push((start as usize, end as usize, bytes));
        }
        placed.sort_by_key(|&(start, _, _)| start);
        let mut done = 0; // dst[..done] is final
        for (start, end, bytes) in placed {
            // Overlapping segments only come from a hand-edited Program; the
            // later one wins, as a later mmap would.
            if start > done {
                dst[done..start].fill(0);
            }
            let file_end = start + bytes.len();
            dst[start..file_end].copy_from_slice(bytes);
            dst[file_end..end].fill(0);
            done = done.max(end);
        }
        dst[done..].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::elf::PT_DYNAMIC;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    // ---- A tiny hand-written ELF --------------------------------------
    //
    // Layout (offsets in the file):
    //   0x000 ELF header
    //   0x040 program headers: 0 PT_PHDR, 1 PT_LOAD R+X (offset 0: header,
    //         program headers, code), 2 PT_LOAD R+W (dynamic section, the
    //         data word, then 0x100 bytes of bss), 3 PT_GNU_STACK, and for
    //         the static-pie 4 PT_DYNAMIC (DT_FLAGS_1 = DF_1_PIE).
    //   code  `mov edi, [rip+data]; mov eax, 60; syscall`: exit(42)
    //   data  [dynamic entries] 42u32
    //   tail  an interpreter name, in no segment (for PT_INTERP tests)

    const TINY_EXEC_BASE: u64 = 0x40_0000;
    const CODE: [u8; 13] = [
        0x8b, 0x3d, 0, 0, 0, 0, // mov edi, [rip + disp32]
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ];
    const INTERP: &[u8] = b"/lib64/ld-linux-x86-64.so.2\0";
    const BSS: u64 = 0x100;

    /// Where the fields of a tiny ELF are, for tests that damage them.
    #[derive(Debug, Clone, Copy)]
    struct TinyLayout {
        phnum: usize,
        code: u64,
        data: u64,
        data_len: u64,
        word: u64,
        interp: u64,
        base: u64,
    }

    fn ph(i: usize) -> usize {
        64 + 56 * i
    }

    fn put16(v: &mut [u8], off: usize, x: u16) {
        v[off..off + 2].copy_from_slice(&x.to_le_bytes());
    }
    fn put32(v: &mut [u8], off: usize, x: u32) {
        v[off..off + 4].copy_from_slice(&x.to_le_bytes());
    }
    fn put64(v: &mut [u8], off: usize, x: u64) {
        v[off..off + 8].copy_from_slice(&x.to_le_bytes());
    }

    // Offsets of the fields inside a program header.
    const P_TYPE: usize = 0;
    const P_FLAGS: usize = 4;
    const P_OFFSET: usize = 8;
    const P_VADDR: usize = 16;
    const P_FILESZ: usize = 32;
    const P_MEMSZ: usize = 40;
    const P_ALIGN: usize = 48;

    #[allow(clippy::too_many_arguments)]
    fn put_ph(
        v: &mut [u8],
        i: usize,
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
        align: u64,
    ) {
        let o = ph(i);
        put32(v, o + P_TYPE, p_type);
        put32(v, o + P_FLAGS, flags);
        put64(v, o + P_OFFSET, offset);
        put64(v, o + P_VADDR, vaddr);
        put64(v, o + 24, vaddr); // p_paddr
        put64(v, o + P_FILESZ, filesz);
        put64(v, o + P_MEMSZ, memsz);
        put64(v, o + P_ALIGN, align);
    }

    fn tiny_layout(pie: bool) -> TinyLayout {
        let phnum = if pie { 5 } else { 4 };
        let code = (64 + 56 * phnum) as u64;
        let data = (code + CODE.len() as u64).div_ceil(16) * 16;
        let dyn_len = if pie { 32 } else { 0 };
        let word = data + dyn_len;
        let data_len = dyn_len + 4;
        TinyLayout {
            phnum,
            code,
            data,
            data_len,
            word,
            interp: data + data_len,
            base: if pie { 0 } else { TINY_EXEC_BASE },
        }
    }

    /// A minimal valid static executable (`pie`: a static-pie) that exits
    /// with status 42, read from its data segment.
    fn tiny_elf(pie: bool) -> Vec<u8> {
        let l = tiny_layout(pie);
        let mut v = vec![0u8; (l.interp as usize) + INTERP.len()];
        // Data is mapped one page above the file offset, so that it never
        // shares a page with the code and keeps vaddr ≡ offset (mod 4096).
        let data_vaddr = l.base + 0x1000 + l.data;
        let rx_len = l.code + CODE.len() as u64;

        v[..4].copy_from_slice(&ELFMAG);
        v[4] = ELFCLASS64;
        v[5] = ELFDATA2LSB;
        v[6] = 1; // EV_CURRENT
        put16(&mut v, 16, if pie { ET_DYN } else { ET_EXEC });
        put16(&mut v, 18, EM_X86_64);
        put32(&mut v, 20, 1);
        put64(&mut v, 24, l.base + l.code); // e_entry
        put64(&mut v, 32, 64); // e_phoff
        put16(&mut v, 52, 64); // e_ehsize
        put16(&mut v, 54, 56); // e_phentsize
        put16(&mut v, 56, l.phnum as u16);

        let table = 56 * l.phnum as u64;
        put_ph(&mut v, 0, PT_PHDR, PF_R, 64, l.base + 64, table, table, 8);
        put_ph(
            &mut v,
            1,
            PT_LOAD,
            PF_R | PF_X,
            0,
            l.base,
            rx_len,
            rx_len,
            0x1000,
        );
        put_ph(
            &mut v,
            2,
            PT_LOAD,
            PF_R | PF_W,
            l.data,
            data_vaddr,
            l.data_len,
            l.data_len + BSS,
            0x1000,
        );
        put_ph(&mut v, 3, PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 16);
        if pie {
            put_ph(
                &mut v,
                4,
                PT_DYNAMIC,
                PF_R | PF_W,
                l.data,
                data_vaddr,
                32,
                32,
                8,
            );
            put64(&mut v, l.data as usize, DT_FLAGS_1 as u64);
            put64(&mut v, l.data as usize + 8, u64::from(DF_1_PIE));
            // The DT_NULL entry is the zeroes that follow.
        }

        let code = l.code as usize;
        v[code..code + CODE.len()].copy_from_slice(&CODE);
        let rip_after = l.base + l.code + 6;
        let disp = (l.base + 0x1000 + l.word) - rip_after;
        put32(&mut v, code + 2, disp as u32);
        put32(&mut v, l.word as usize, 42);
        let interp = l.interp as usize;
        v[interp..interp + INTERP.len()].copy_from_slice(INTERP);
        v
    }

    /// What every accepted program must satisfy, and what `load` must do
    /// with it (mirrors the fuzz target `lwk_elf`).
    fn check_accepted(p: &Program, file: &[u8]) {
        assert!((p.lo | p.hi) & (PAGE_SIZE - 1) == 0 && p.lo < p.hi);
        assert!(p.hi <= USER_ADDRESS_END);
        assert!(p.image_bytes() <= MAX_IMAGE_BYTES);
        assert!(p.max_align.is_power_of_two() && p.max_align >= PAGE_SIZE);
        assert_eq!(p.phentsize, 56);
        assert!(!p.segments.is_empty());
        for s in &p.segments {
            assert!(s.vaddr >= p.lo && s.vaddr + s.mem_size <= p.hi);
            assert!(s.file_size <= s.mem_size && s.mem_size > 0);
            assert!(s.file_offset + s.file_size <= file.len() as u64);
        }
        assert!(p
            .segments
            .iter()
            .any(|s| s.executable && p.entry >= s.vaddr && p.entry < s.vaddr + s.mem_size));
        let table = u64::from(p.phnum) * 56;
        assert!(p
            .segments
            .iter()
            .any(|s| p.phdr_vaddr >= s.vaddr && p.phdr_vaddr + table <= s.vaddr + s.file_size));
        // Large images (a mutated memory size) are checked by the fuzz
        // target; here they would only slow the property tests down.
        if p.image_bytes() > 16 << 20 {
            return;
        }
        let mut zeroed = vec![0u8; p.image_bytes() as usize];
        p.load(file, &mut zeroed)
            .expect("an accepted program loads");
        let mut dirty = vec![0xa5u8; p.image_bytes() as usize];
        p.load(file, &mut dirty).expect("an accepted program loads");
        assert!(zeroed == dirty, "load leaves no old byte behind");
        let mut covered = vec![false; zeroed.len()];
        for s in &p.segments {
            let at = (s.vaddr - p.lo) as usize;
            let (fs, ms) = (s.file_size as usize, s.mem_size as usize);
            let off = s.file_offset as usize;
            assert_eq!(
                &zeroed[at..at + fs],
                &file[off..off + fs],
                "file bytes land at vaddr - lo"
            );
            assert!(
                zeroed[at + fs..at + ms].iter().all(|&b| b == 0),
                "bss is zero"
            );
            covered[at..at + ms].iter_mut().for_each(|c| *c = true);
        }
        assert!(
            zeroed.iter().zip(&covered).all(|(&b, &c)| c || b == 0),
            "gaps are zero"
        );
    }

    fn err(file: &[u8]) -> ElfError {
        parse(file).expect_err("this file must be refused")
    }

    // ---- The tiny ELF itself --------------------------------------------

    #[test]
    fn tiny_exec_parses_to_its_known_layout() {
        let file = tiny_elf(false);
        let l = tiny_layout(false);
        let p = parse(&file).unwrap();
        assert_eq!(p.kind, ProgramKind::Exec);
        assert_eq!(p.entry, TINY_EXEC_BASE + l.code);
        assert_eq!(p.phdr_vaddr, TINY_EXEC_BASE + 64);
        assert_eq!((p.phnum, p.phentsize), (4, 56));
        assert_eq!(p.segments.len(), 2);
        assert_eq!(
            p.segments[0],
            LoadSegment {
                vaddr: TINY_EXEC_BASE,
                mem_size: l.code + 13,
                file_offset: 0,
                file_size: l.code + 13,
                readable: true,
                writable: false,
                executable: true,
            }
        );
        assert_eq!(
            p.segments[1],
            LoadSegment {
                vaddr: TINY_EXEC_BASE + 0x1000 + l.data,
                mem_size: l.data_len + BSS,
                file_offset: l.data,
                file_size: l.data_len,
                readable: true,
                writable: true,
                executable: false,
            }
        );
        assert_eq!((p.lo, p.hi), (TINY_EXEC_BASE, TINY_EXEC_BASE + 0x2000));
        assert_eq!(p.image_bytes(), 0x2000);
        assert_eq!(p.max_align, 0x1000);
        assert!(!p.exec_stack);
        check_accepted(&p, &file);
    }

    #[test]
    fn tiny_static_pie_parses_as_static_pie_at_link_address_zero() {
        let file = tiny_elf(true);
        let p = parse(&file).unwrap();
        assert_eq!(p.kind, ProgramKind::StaticPie);
        assert_eq!(p.entry, tiny_layout(true).code);
        assert_eq!((p.lo, p.phdr_vaddr, p.phnum), (0, 64, 5));
        check_accepted(&p, &file);
    }

    #[test]
    fn load_copies_file_bytes_and_zeroes_bss_and_gaps_over_garbage() {
        let file = tiny_elf(false);
        let l = tiny_layout(false);
        let p = parse(&file).unwrap();
        let mut dst = vec![0xffu8; p.image_bytes() as usize];
        p.load(&file, &mut dst).unwrap();
        let rx_len = (l.code + 13) as usize;
        assert_eq!(&dst[..rx_len], &file[..rx_len]);
        let data_at = (0x1000 + l.data) as usize;
        assert!(dst[rx_len..data_at].iter().all(|&b| b == 0), "gap");
        let word = (0x1000 + l.word) as usize;
        assert_eq!(&dst[word..word + 4], &42u32.to_le_bytes());
        assert!(dst[word + 4..].iter().all(|&b| b == 0), "bss and tail");
    }

    #[test]
    fn load_refuses_a_buffer_of_the_wrong_size_or_another_file() {
        let file = tiny_elf(false);
        let p = parse(&file).unwrap();
        let mut short = vec![0u8; 10];
        let e = p.load(&file, &mut short).unwrap_err();
        assert!(matches!(
            e,
            ElfError::DestinationSize {
                expected: 0x2000,
                actual: 10
            }
        ));
        assert!(e.to_string().contains("needs exactly 8192"));
        let mut dst = vec![7u8; p.image_bytes() as usize];
        let e = p.load(&file[..100], &mut dst).unwrap_err();
        assert!(
            matches!(e, ElfError::LoadMismatch { segment: 0, .. }),
            "{e}"
        );
        assert!(dst.iter().all(|&b| b == 7), "a refused load writes nothing");
        let mut edited = p.clone();
        edited.segments[1].vaddr = edited.hi;
        assert!(matches!(
            edited.load(&file, &mut dst),
            Err(ElfError::LoadMismatch { segment: 1, .. })
        ));
    }

    /// Writes `bytes` as an executable file and runs it, retrying while
    /// another test thread's fork still holds it open for writing.
    fn run_file(dir: &Path, name: &str, bytes: &[u8]) -> Option<std::process::Output> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        run_path(&path)
    }

    fn run_path(path: &Path) -> Option<std::process::Output> {
        for _ in 0..50 {
            match Command::new(path).output() {
                Ok(out) => return Some(out),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => {
                    println!("SKIP running {}: {e}", path.display());
                    return None;
                }
            }
        }
        None
    }

    #[test]
    fn tiny_elves_are_real_programs_that_linux_runs() {
        let dir = tempfile::tempdir().unwrap();
        for pie in [false, true] {
            if let Some(out) = run_file(dir.path(), &format!("tiny-{pie}"), &tiny_elf(pie)) {
                assert_eq!(out.status.code(), Some(42), "pie={pie}: {out:?}");
            }
        }
    }

    /// The seeds of the fuzz target are the tiny ELFs; regenerate them with
    /// `LWK_WRITE_FUZZ_SEEDS=1 cargo test -p lwk-vmm --lib fuzz_seeds`.
    #[test]
    fn fuzz_seeds_are_the_tiny_elves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/lwk_elf");
        for (name, pie) in [("tiny_exec", false), ("tiny_static_pie", true)] {
            let path = dir.join(name);
            let bytes = tiny_elf(pie);
            assert!(bytes.len() < 4096);
            if std::env::var_os("LWK_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            match std::fs::read(&path) {
                Ok(seed) => assert!(seed == bytes, "{} is stale: regenerate it", path.display()),
                Err(e) => println!("SKIP comparing {}: {e}", path.display()),
            }
        }
    }

    // ---- Refusals, each from a damaged tiny ELF ---------------------------

    #[test]
    fn non_elf_files_are_named_for_what_they_are() {
        let e = err(b"");
        assert!(matches!(e, ElfError::NotElf { .. }) && e.to_string().contains("empty"));
        let e = err(b"#!/bin/sh\necho hi\n");
        assert!(e.to_string().contains("a script (#!/bin/sh)"), "{e}");
        let e = err(b"hello world\n");
        assert!(e.to_string().contains("a text file"), "{e}");
        let e = err(&[0x4d, 0x5a, 0x90, 0, 3]);
        assert!(
            e.to_string().contains("4d 5a 90 00, not the ELF magic"),
            "{e}"
        );
        assert!(e.to_string().starts_with("not an ELF file"));
        assert!(matches!(
            err(b"\x7fEL"),
            ElfError::Truncated {
                part: Part::Header,
                file_len: 3
            }
        ));
    }

    #[test]
    fn identity_bytes_name_32_bit_big_endian_and_damage() {
        let mut f = tiny_elf(false);
        f[4] = ELFCLASS32;
        let e = err(&f);
        assert_eq!(e, ElfError::Class32);
        assert!(e.to_string().contains("32-bit") && e.to_string().contains("64-bit x86-64"));
        let mut f = tiny_elf(false);
        f[5] = ELFDATA2MSB;
        assert!(err(&f).to_string().contains("big-endian"));
        let mut f = tiny_elf(false);
        f[4] = 9;
        assert_eq!(
            err(&f),
            ElfError::BadIdent {
                field: "EI_CLASS",
                value: 9
            }
        );
        let mut f = tiny_elf(false);
        f[5] = 0;
        assert_eq!(
            err(&f),
            ElfError::BadIdent {
                field: "EI_DATA",
                value: 0
            }
        );
        assert!(matches!(
            err(&tiny_elf(false)[..40]),
            ElfError::Truncated {
                part: Part::Header,
                ..
            }
        ));
    }

    #[test]
    fn wrong_machine_is_named() {
        for (machine, name) in [
            (183, "aarch64"),
            (3, "i386"),
            (243, "RISC-V"),
            (9999, "machine number 9999"),
        ] {
            let mut f = tiny_elf(false);
            put16(&mut f, 18, machine);
            let e = err(&f);
            assert_eq!(e, ElfError::WrongMachine { machine });
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn object_files_core_dumps_and_odd_types_are_not_executables() {
        for (t, kind, words) in [
            (ET_REL, NotExecutableKind::Relocatable, "relocatable object"),
            (ET_CORE, NotExecutableKind::Core, "core dump"),
            (0xfe00, NotExecutableKind::Other(0xfe00), "type 0xfe00"),
        ] {
            let mut f = tiny_elf(false);
            put16(&mut f, 16, t);
            let e = err(&f);
            assert_eq!(e, ElfError::NotExecutable { kind });
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn et_dyn_without_df_1_pie_is_a_shared_library() {
        let mut f = tiny_elf(true);
        put64(&mut f, tiny_layout(true).data as usize + 8, 0); // DT_FLAGS_1 = 0
        let e = err(&f);
        assert_eq!(
            e,
            ElfError::NotExecutable {
                kind: NotExecutableKind::SharedLibrary
            }
        );
        assert!(e.to_string().contains("shared library"), "{e}");
        // And without any dynamic section at all.
        let mut f = tiny_elf(true);
        put32(&mut f, ph(4) + P_TYPE, 0);
        assert_eq!(
            err(&f),
            ElfError::NotExecutable {
                kind: NotExecutableKind::SharedLibrary
            }
        );
    }

    #[test]
    fn pt_interp_means_dynamically_linked_and_names_the_interpreter() {
        let mut f = tiny_elf(false);
        let l = tiny_layout(false);
        let n = INTERP.len() as u64;
        put_ph(&mut f, 3, PT_INTERP, PF_R, l.interp, 0, n, n, 1);
        let e = err(&f);
        assert_eq!(
            e,
            ElfError::Dynamic {
                interpreter: "/lib64/ld-linux-x86-64.so.2".into()
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("dynamically linked") && msg.contains("-static (or -static-pie)"));
        // Its name cut by the end of the file still says "dynamic".
        put64(&mut f, ph(3) + P_OFFSET, 1 << 40);
        assert!(matches!(err(&f), ElfError::Dynamic { .. }));
    }

    #[test]
    fn dt_needed_without_an_interpreter_is_refused() {
        let mut f = tiny_elf(true);
        put64(&mut f, tiny_layout(true).data as usize, DT_NEEDED as u64);
        let e = err(&f);
        assert_eq!(e, ElfError::NeedsLibraries { count: 1 });
        assert!(e.to_string().contains("1 shared library"), "{e}");
    }

    #[test]
    fn a_dynamic_section_past_the_end_is_a_truncation() {
        let mut f = tiny_elf(true);
        put64(&mut f, ph(4) + P_OFFSET, 0x10_0000);
        assert!(matches!(
            err(&f),
            ElfError::Truncated {
                part: Part::Dynamic(4),
                ..
            }
        ));
    }

    #[test]
    fn program_header_table_problems() {
        let mut f = tiny_elf(false);
        put16(&mut f, 54, 64);
        assert_eq!(err(&f), ElfError::BadPhentsize { phentsize: 64 });
        let mut f = tiny_elf(false);
        put16(&mut f, 56, 0xffff);
        assert_eq!(err(&f), ElfError::TooManyProgramHeaders);
        let mut f = tiny_elf(false);
        put16(&mut f, 56, 0);
        assert_eq!(err(&f), ElfError::NoLoadSegment);
        let mut f = tiny_elf(false);
        put16(&mut f, 56, 1000);
        let len = f.len() as u64;
        let fitting = ((len - 64) / 56) as u16;
        let e = err(&f);
        assert_eq!(
            e,
            ElfError::Truncated {
                part: Part::ProgramHeader(fitting),
                file_len: len
            }
        );
        assert!(e
            .to_string()
            .contains(&format!("before the end of program header {fitting}")));
        let mut f = tiny_elf(false);
        put64(&mut f, 32, u64::MAX - 3);
        assert!(matches!(
            err(&f),
            ElfError::Truncated {
                part: Part::ProgramHeader(0),
                ..
            }
        ));
        let f = tiny_elf(false);
        let cut = &f[..ph(2) + 10];
        assert!(matches!(
            err(cut),
            ElfError::Truncated {
                part: Part::ProgramHeader(2),
                ..
            }
        ));
    }

    #[test]
    fn no_pt_load_or_only_empty_ones_is_refused() {
        let mut f = tiny_elf(false);
        put32(&mut f, ph(1) + P_TYPE, 0);
        put32(&mut f, ph(2) + P_TYPE, 0);
        let e = err(&f);
        assert_eq!(e, ElfError::NoLoadSegment);
        assert!(e.to_string().contains("no loadable segment"));
        let mut f = tiny_elf(false);
        put64(&mut f, ph(1) + P_FILESZ, 0);
        put64(&mut f, ph(1) + P_MEMSZ, 0);
        put64(&mut f, ph(2) + P_FILESZ, 0);
        put64(&mut f, ph(2) + P_MEMSZ, 0);
        assert_eq!(err(&f), ElfError::NoLoadSegment);
    }

    /// The tiny exec with program header 2 (the data segment) changed.
    fn with_data_segment(field: usize, value: u64) -> Vec<u8> {
        let mut f = tiny_elf(false);
        put64(&mut f, ph(2) + field, value);
        f
    }

    fn segment_problem(file: &[u8]) -> (u16, SegmentProblem) {
        match err(file) {
            ElfError::BadSegment { index, problem } => (index, problem),
            other => panic!("expected a bad segment, got {other:?}: {other}"),
        }
    }

    #[test]
    fn absurd_segments_are_refused_with_the_problem_named() {
        let l = tiny_layout(false);
        let data_vaddr = TINY_EXEC_BASE + 0x1000 + l.data;

        let f = with_data_segment(P_FILESZ, l.data_len + BSS + 1);
        let (i, p) = segment_problem(&f);
        assert_eq!(
            (i, p),
            (
                2,
                SegmentProblem::FileLargerThanMemory {
                    file_size: l.data_len + BSS + 1,
                    mem_size: l.data_len + BSS
                }
            )
        );
        assert!(err(&f).to_string().contains("more bytes in the file"));

        let f = with_data_segment(P_OFFSET, u64::MAX - 1);
        assert!(matches!(
            segment_problem(&f),
            (2, SegmentProblem::FileRangeOverflows { .. })
        ));

        let f = with_data_segment(P_MEMSZ, u64::MAX - 0x100);
        assert!(matches!(
            segment_problem(&f),
            (2, SegmentProblem::AddressOverflows { .. })
        ));

        let f = with_data_segment(P_MEMSZ, USER_ADDRESS_END);
        let e = err(&f);
        assert!(matches!(
            e,
            ElfError::BadSegment {
                index: 2,
                problem: SegmentProblem::AboveUserSpace { .. }
            }
        ));
        assert!(e.to_string().contains("47-bit user half"), "{e}");

        let f = with_data_segment(P_ALIGN, 0x3000);
        assert_eq!(
            segment_problem(&f),
            (2, SegmentProblem::AlignNotPowerOfTwo { align: 0x3000 })
        );
        assert!(err(&f).to_string().contains("not a power of two"));

        let f = with_data_segment(P_ALIGN, 1 << 31);
        assert_eq!(
            segment_problem(&f),
            (2, SegmentProblem::AlignTooLarge { align: 1 << 31 })
        );

        let f = with_data_segment(P_VADDR, data_vaddr + 8);
        assert_eq!(
            segment_problem(&f),
            (
                2,
                SegmentProblem::Misaligned {
                    vaddr: data_vaddr + 8,
                    offset: l.data,
                    align: 0x1000
                }
            )
        );

        // The code segment's bss reaching into the data segment.
        let mut f = tiny_elf(false);
        put64(&mut f, ph(1) + P_MEMSZ, 0x2000);
        let e = err(&f);
        assert_eq!(
            e,
            ElfError::BadSegment {
                index: 2,
                problem: SegmentProblem::Overlaps { other: 1 }
            }
        );
        assert!(
            e.to_string()
                .contains("segment 2 (program header 2, PT_LOAD) overlaps segment 1"),
            "{e}"
        );
    }

    #[test]
    fn p_align_zero_or_one_means_unconstrained() {
        for align in [0, 1] {
            let f = with_data_segment(P_ALIGN, align);
            check_accepted(&parse(&f).unwrap(), &f);
        }
    }

    #[test]
    fn segment_bytes_past_the_end_of_the_file_are_a_truncation() {
        let f = tiny_elf(false);
        let cut = &f[..tiny_layout(false).word as usize + 2];
        let e = err(cut);
        assert_eq!(
            e,
            ElfError::Truncated {
                part: Part::SegmentBytes(2),
                file_len: cut.len() as u64
            }
        );
        assert!(e.to_string().contains("the bytes of segment 2"), "{e}");
    }

    #[test]
    fn an_image_over_64_gib_is_too_large() {
        let f = with_data_segment(P_MEMSZ, 65 << 30);
        let e = err(&f);
        assert!(matches!(e, ElfError::TooLarge { bytes } if bytes > MAX_IMAGE_BYTES));
        assert!(
            e.to_string().contains("at most 68719476736 (64 GiB)"),
            "{e}"
        );
    }

    #[test]
    fn the_entry_point_must_be_in_executable_memory() {
        let l = tiny_layout(false);
        let mut f = tiny_elf(false);
        let data_vaddr = TINY_EXEC_BASE + 0x1000 + l.data;
        put64(&mut f, 24, data_vaddr);
        assert_eq!(err(&f), ElfError::EntryNotExecutable { entry: data_vaddr });
        put64(&mut f, 24, 0);
        assert!(err(&f)
            .to_string()
            .contains("entry point 0x0 is in no executable segment"));
    }

    #[test]
    fn program_headers_outside_loaded_memory_are_refused() {
        // Move the table past every segment and drop PT_PHDR.
        let mut f = tiny_elf(false);
        let table: Vec<u8> = f[64..ph(4)].to_vec();
        let at = f.len() as u64;
        f.extend_from_slice(&table);
        put64(&mut f, 32, at);
        let t = at as usize;
        f[t..t + 4].copy_from_slice(&0u32.to_le_bytes()); // PT_PHDR -> PT_NULL
        let e = err(&f);
        assert_eq!(e, ElfError::PhdrsNotLoaded);
        assert!(e.to_string().contains("AT_PHDR"));
        // Without PT_PHDR but with the table in the first PT_LOAD, the
        // PT_LOAD gives the address (as for static glibc executables).
        let mut f = tiny_elf(false);
        put32(&mut f, ph(0) + P_TYPE, 0);
        assert_eq!(parse(&f).unwrap().phdr_vaddr, TINY_EXEC_BASE + 64);
    }

    #[test]
    fn an_executable_pt_gnu_stack_asks_for_an_executable_stack() {
        let mut f = tiny_elf(false);
        put32(&mut f, ph(3) + P_FLAGS, PF_R | PF_W | PF_X);
        assert!(parse(&f).unwrap().exec_stack);
        put32(&mut f, ph(3) + P_TYPE, 0);
        assert!(
            !parse(&f).unwrap().exec_stack,
            "no PT_GNU_STACK: not executable on x86-64"
        );
    }

    // ---- Never panics ---------------------------------------------------

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = parse(&bytes) {
                check_accepted(&p, &bytes);
            }
        }

        #[test]
        fn parse_never_panics_on_an_elf_header_then_noise(
            pie in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut f = tiny_elf(pie)[..64].to_vec();
            f.extend_from_slice(&tail);
            if let Ok(p) = parse(&f) {
                check_accepted(&p, &f);
            }
        }

        #[test]
        fn parse_never_panics_on_mutated_valid_elves(
            pie in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            words in proptest::collection::vec((0usize..5, 0usize..7, prop_oneof![
                Just(0u64), Just(1), Just(u64::MAX), Just(USER_ADDRESS_END), Just(1 << 40),
                Just(0x1000), Just(0x20_0000), any::<u64>(), 0u64..0x3000,
            ]), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut f = tiny_elf(pie);
            for (i, b) in edits {
                let at = i.index(f.len());
                f[at] = b;
            }
            let phnum = tiny_layout(pie).phnum;
            for (header, field, value) in words {
                let at = ph(header % phnum) + 8 * (field + 1);
                put64(&mut f, at, value);
            }
            if let Some(c) = cut {
                f.truncate(c.index(f.len() + 1));
            }
            if let Ok(p) = parse(&f) {
                check_accepted(&p, &f);
            }
        }
    }

    // ---- Real binaries, compiled here with cc -------------------------------

    const HELLO_C: &str = r#"#include <stdio.h>
#include <sys/auxv.h>
int counter = 7;           /* .data */
static char scratch[65536]; /* .bss */
int main(void) {
    scratch[counter] = 1;
    printf("hello base=%lx phdr=%lx entry=%lx phnum=%lx\n",
           getauxval(AT_BASE), getauxval(AT_PHDR), getauxval(AT_ENTRY),
           getauxval(AT_PHNUM) + scratch[counter] - 1);
    return 0;
}
"#;

    const LIB_C: &str = "int twice(int x) { return 2 * x; }\n";

    /// A scratch directory holding the C sources, or `None` (after printing
    /// SKIP) when there is no C compiler.
    fn c_sources(test: &str) -> Option<tempfile::TempDir> {
        let ok = Command::new("cc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            println!("SKIP {test}: no C compiler");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.c"), HELLO_C).unwrap();
        std::fs::write(dir.path().join("lib.c"), LIB_C).unwrap();
        std::fs::write(
            dir.path().join("start.c"),
            "void _start(void) { for (;;) { } }\n",
        )
        .unwrap();
        Some(dir)
    }

    /// Runs `cc args... -o out` in `dir`; the output's bytes, or `None` if
    /// cc failed (printing why).
    fn cc(dir: &Path, out: &str, args: &[&str]) -> Option<(PathBuf, Vec<u8>)> {
        let path = dir.join(out);
        let res = Command::new("cc")
            .current_dir(dir)
            .args(args)
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        if !res.status.success() {
            println!(
                "cc {args:?} failed: {}",
                String::from_utf8_lossy(&res.stderr)
            );
            return None;
        }
        let bytes = std::fs::read(&path).unwrap();
        Some((path, bytes))
    }

    /// What `readelf -lhW` says about a file, parsed: an oracle independent
    /// of `object` and of our own code.
    #[derive(Debug, Default)]
    struct Readelf {
        type_: String,
        entry: u64,
        phoff: u64,
        phnum: u16,
        loads: Vec<LoadSegment>,
        aligns: Vec<u64>,
        phdr: Option<u64>,
        exec_stack: bool,
    }

    fn hex(s: &str) -> u64 {
        u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
    }

    fn readelf(path: &Path) -> Option<Readelf> {
        let out = Command::new("readelf")
            .arg("-lhW")
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let mut r = Readelf::default();
        for line in text.lines() {
            let field = |name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_string());
            if let Some(v) = field("Type:") {
                r.type_ = v;
            } else if let Some(v) = field("Entry point address:") {
                r.entry = hex(&v);
            } else if let Some(v) = field("Start of program headers:") {
                r.phoff = v.split_whitespace().next().unwrap().parse().unwrap();
            } else if let Some(v) = field("Number of program headers:") {
                r.phnum = v.parse().unwrap();
            }
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 8 || !t[1].starts_with("0x") {
                continue;
            }
            // Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg... Align
            let flags = t[6..t.len() - 1].concat();
            match t[0] {
                "LOAD" => {
                    r.aligns.push(hex(t[t.len() - 1]));
                    r.loads.push(LoadSegment {
                        vaddr: hex(t[2]),
                        mem_size: hex(t[5]),
                        file_offset: hex(t[1]),
                        file_size: hex(t[4]),
                        readable: flags.contains('R'),
                        writable: flags.contains('W'),
                        executable: flags.contains('E'),
                    })
                }
                "PHDR" => r.phdr = Some(hex(t[2])),
                "GNU_STACK" => r.exec_stack = flags.contains('E'),
                _ => {}
            }
        }
        Some(r)
    }

    /// Checks a parsed program against readelf's view of the same file.
    fn assert_matches_readelf(p: &Program, path: &Path) {
        let Some(r) = readelf(path) else {
            println!("SKIP comparing with readelf: readelf is missing");
            return;
        };
        assert_eq!(p.entry, r.entry);
        assert_eq!(p.phnum, r.phnum);
        let loads: Vec<LoadSegment> = r.loads.iter().copied().filter(|s| s.mem_size > 0).collect();
        assert_eq!(p.segments, loads);
        let lo = loads.iter().map(|s| s.vaddr).min().unwrap() / 4096 * 4096;
        let end = loads.iter().map(|s| s.vaddr + s.mem_size).max().unwrap();
        assert_eq!((p.lo, p.hi), (lo, end.div_ceil(4096) * 4096));
        assert_eq!(p.max_align, r.aligns.iter().copied().fold(4096, u64::max));
        let expected_phdr = r.phdr.unwrap_or_else(|| {
            let s = loads
                .iter()
                .find(|s| s.file_offset <= r.phoff && r.phoff < s.file_offset + s.file_size)
                .unwrap();
            s.vaddr + (r.phoff - s.file_offset)
        });
        assert_eq!(p.phdr_vaddr, expected_phdr);
        assert_eq!(p.exec_stack, r.exec_stack);
        match p.kind {
            ProgramKind::Exec => assert!(r.type_.starts_with("EXEC"), "{}", r.type_),
            ProgramKind::StaticPie => assert!(r.type_.starts_with("DYN"), "{}", r.type_),
        }
    }

    /// Runs a compiled hello and returns what it read from its auxv:
    /// (AT_BASE, AT_PHDR, AT_ENTRY, AT_PHNUM).
    fn run_hello(path: &Path) -> Option<(u64, u64, u64, u64)> {
        let out = run_path(path)?;
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut vals = text.trim().strip_prefix("hello ")?.split(' ').map(|kv| {
            let v = kv.split('=').nth(1).unwrap();
            u64::from_str_radix(v, 16).unwrap()
        });
        Some((vals.next()?, vals.next()?, vals.next()?, vals.next()?))
    }

    #[test]
    fn a_static_c_program_is_accepted_as_readelf_describes_it() {
        let test = "a_static_c_program_is_accepted_as_readelf_describes_it";
        let Some(dir) = c_sources(test) else { return };
        let (path, bytes) = cc(
            dir.path(),
            "hello-static",
            &["-static", "-no-pie", "-O1", "hello.c"],
        )
        .expect("cc -static");
        let p = parse(&bytes).unwrap();
        assert_eq!(p.kind, ProgramKind::Exec);
        assert_matches_readelf(&p, &path);
        check_accepted(&p, &bytes);
        // Linux runs it at its link addresses: bias 0.
        if let Some((base, phdr, entry, phnum)) = run_hello(&path) {
            assert_eq!(
                (base, phdr, entry, phnum),
                (0, p.phdr_vaddr, p.entry, u64::from(p.phnum))
            );
        }
    }

    #[test]
    fn static_pie_relocations_are_all_relative_and_it_runs_at_a_kernel_chosen_base() {
        let test = "static_pie_relocations_are_all_relative_and_it_runs_at_a_kernel_chosen_base";
        let Some(dir) = c_sources(test) else { return };
        let (path, bytes) = cc(
            dir.path(),
            "hello-spie",
            &["-static-pie", "-fPIE", "-O1", "hello.c"],
        )
        .expect("cc -static-pie");
        let p = parse(&bytes).unwrap();
        assert_eq!(p.kind, ProgramKind::StaticPie);
        assert_matches_readelf(&p, &path);
        check_accepted(&p, &bytes);

        // Every relocation only adds the load bias (no symbol lookup): the
        // program's own start-up code can apply them.
        let relocations = relative_relocations(&bytes, &p);
        assert!(
            relocations > 0,
            "a static-pie C program has relocations to apply"
        );

        // Linux runs it, without relocating anything, at a base it chooses:
        // AT_BASE is 0, AT_PHDR and AT_ENTRY are link address + one bias,
        // a multiple of max_align. That is what the LWK must pass.
        if let Some((base, phdr, entry, phnum)) = run_hello(&path) {
            assert_eq!(base, 0);
            let bias = phdr - p.phdr_vaddr;
            assert_ne!(bias, 0);
            assert_eq!(entry - p.entry, bias);
            assert_eq!(bias % p.max_align, 0);
            assert_eq!(phnum, u64::from(p.phnum));
        }
    }

    /// Counts the relocations of a static-pie, asserting that each is
    /// relative (R_X86_64_RELATIVE or IRELATIVE, no symbol), or packed
    /// relative (DT_RELR).
    fn relative_relocations(file: &[u8], p: &Program) -> usize {
        const DT_PLTRELSZ: i64 = 2;
        const DT_RELA: i64 = 7;
        const DT_RELASZ: i64 = 8;
        const DT_REL: i64 = 17;
        const DT_JMPREL: i64 = 23;
        const DT_RELRSZ: i64 = 35;
        const R_X86_64_RELATIVE: u64 = 8;
        const R_X86_64_IRELATIVE: u64 = 37;
        let header: &FileHeader64<LE> = file.read_at(0).unwrap();
        let phdrs = program_headers(file, header).unwrap();
        let dynamic = phdrs
            .iter()
            .find_map(|ph| ph.dynamic(LE, file).unwrap())
            .unwrap();
        let tag = |t: i64| {
            dynamic
                .iter()
                .find(|d| d.d_tag.get(LE) == t)
                .map(|d| d.d_val.get(LE))
        };
        assert_eq!(tag(DT_REL), None, "x86-64 uses RELA");
        let file_offset = |vaddr: u64| {
            let s = p
                .segments
                .iter()
                .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.file_size)
                .unwrap();
            (s.file_offset + (vaddr - s.vaddr)) as usize
        };
        let mut count = tag(DT_RELRSZ).map_or(0, |n| n as usize / 8);
        for (table, size) in [(DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)] {
            let (Some(addr), Some(size)) = (tag(table), tag(size)) else {
                continue;
            };
            let at = file_offset(addr);
            for rela in file[at..at + size as usize].chunks_exact(24) {
                let info = u64::from_le_bytes(rela[8..16].try_into().unwrap());
                let (sym, kind) = (info >> 32, info & 0xffff_ffff);
                assert_eq!(sym, 0, "a relocation naming a symbol");
                assert!(
                    kind == R_X86_64_RELATIVE || kind == R_X86_64_IRELATIVE,
                    "type {kind}"
                );
                count += 1;
            }
        }
        count
    }

    #[test]
    fn dynamically_linked_programs_are_refused_naming_the_interpreter() {
        let test = "dynamically_linked_programs_are_refused_naming_the_interpreter";
        let Some(dir) = c_sources(test) else { return };
        for (out, args) in [
            ("hello-dyn-pie", &["-pie", "-fPIE", "hello.c"][..]),
            ("hello-dyn", &["-no-pie", "hello.c"]),
        ] {
            let (_, bytes) = cc(dir.path(), out, args).expect("cc (dynamic)");
            let e = err(&bytes);
            let ElfError::Dynamic { interpreter } = &e else {
                panic!("{out}: {e:?}")
            };
            assert!(
                interpreter.starts_with('/') && interpreter.contains("ld-"),
                "{interpreter}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(interpreter.as_str()) && msg.contains("link it with -static"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_shared_library_is_refused_as_one() {
        let test = "a_shared_library_is_refused_as_one";
        let Some(dir) = c_sources(test) else { return };
        let (_, bytes) =
            cc(dir.path(), "lib.so", &["-shared", "-fPIC", "lib.c"]).expect("cc -shared");
        let e = err(&bytes);
        assert_eq!(
            e,
            ElfError::NotExecutable {
                kind: NotExecutableKind::SharedLibrary
            }
        );
        assert!(e.to_string().contains("a shared library"));
    }

    #[test]
    fn an_object_file_is_refused_as_one() {
        let test = "an_object_file_is_refused_as_one";
        let Some(dir) = c_sources(test) else { return };
        let (_, bytes) = cc(dir.path(), "hello.o", &["-c", "hello.c"]).expect("cc -c");
        let e = err(&bytes);
        assert_eq!(
            e,
            ElfError::NotExecutable {
                kind: NotExecutableKind::Relocatable
            }
        );
        assert!(e.to_string().contains("relocatable object file"));
    }

    #[test]
    fn a_32_bit_program_is_refused_as_one() {
        let test = "a_32_bit_program_is_refused_as_one";
        let Some(dir) = c_sources(test) else { return };
        // A libc-linked one if multilib is installed; else a freestanding
        // one (the 32-bit linker works without 32-bit libraries); else a
        // header written by hand.
        let bytes = cc(dir.path(), "hello32", &["-m32", "-static", "hello.c"])
            .or_else(|| {
                cc(
                    dir.path(),
                    "start32",
                    &["-m32", "-static", "-nostdlib", "-ffreestanding", "start.c"],
                )
            })
            .map(|(_, b)| b)
            .unwrap_or_else(|| {
                println!("{test}: no 32-bit toolchain; using a hand-written ELFCLASS32 header");
                let mut h = vec![0u8; 52];
                h[..4].copy_from_slice(&ELFMAG);
                h[4] = ELFCLASS32;
                h[5] = ELFDATA2LSB;
                h[6] = 1;
                put16(&mut h, 16, ET_EXEC);
                put16(&mut h, 18, 3); // EM_386
                h
            });
        let e = err(&bytes);
        assert_eq!(e, ElfError::Class32);
        assert!(e.to_string().contains("a 32-bit executable"));
    }

    #[test]
    fn truncated_copies_of_a_real_binary_say_what_was_cut() {
        let test = "truncated_copies_of_a_real_binary_say_what_was_cut";
        let Some(dir) = c_sources(test) else { return };
        let (_, bytes) = cc(
            dir.path(),
            "hello-static",
            &["-static", "-no-pie", "hello.c"],
        )
        .expect("cc -static");
        let p = parse(&bytes).unwrap();
        assert!(matches!(
            err(&bytes[..40]),
            ElfError::Truncated {
                part: Part::Header,
                file_len: 40
            }
        ));
        assert!(matches!(
            err(&bytes[..64 + 56 + 3]),
            ElfError::Truncated {
                part: Part::ProgramHeader(1),
                ..
            }
        ));
        let last = p
            .segments
            .iter()
            .max_by_key(|s| s.file_offset + s.file_size)
            .unwrap();
        let cut = &bytes[..(last.file_offset + last.file_size - 1) as usize];
        let e = err(cut);
        assert!(
            matches!(
                e,
                ElfError::Truncated {
                    part: Part::SegmentBytes(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn a_c_source_file_is_not_an_elf_file() {
        let test = "a_c_source_file_is_not_an_elf_file";
        let Some(dir) = c_sources(test) else { return };
        let text = std::fs::read(dir.path().join("hello.c")).unwrap();
        let e = err(&text);
        assert!(matches!(e, ElfError::NotElf { .. }));
        assert!(
            e.to_string()
                .contains("a text file (it starts with \"#include <stdio.h>\")"),
            "{e}"
        );
    }
}
