//! The initial process stack, as Linux's `execve` builds it (System V
//! x86-64 ABI, section 3.4.1; Linux `fs/binfmt_elf.c` `create_elf_tables`).
//!
//! From `rsp` upwards:
//!
//! ```text
//! rsp ->  argc
//!         argv[0] .. argv[argc-1], NULL
//!         envp[0] .. envp[envc-1], NULL
//!         auxv: (type, value) pairs .., (AT_NULL, 0)
//!         zero padding
//!         AT_RANDOM's 16 bytes
//!         AT_PLATFORM's string ("x86_64\0")
//!         argv strings, envp strings (in order, each NUL-terminated)
//!         AT_EXECFN's string
//! top ->  (8 zero bytes end just below `top`)
//! ```
//!
//! `rsp` is 16-byte aligned, as the ABI requires at process entry (where
//! `rsp` points at `argc`, not at a return address). No `AT_SYSINFO_EHDR`:
//! an LWK maps no vDSO, and libc then makes real system calls for the time.

/// End of the auxiliary vector.
pub const AT_NULL: u64 = 0;
/// Address of the program headers in memory.
pub const AT_PHDR: u64 = 3;
/// Size of one program header.
pub const AT_PHENT: u64 = 4;
/// Number of program headers.
pub const AT_PHNUM: u64 = 5;
/// Page size.
pub const AT_PAGESZ: u64 = 6;
/// Load address of the interpreter; 0 for a static program.
pub const AT_BASE: u64 = 7;
/// Flags (always 0 on Linux).
pub const AT_FLAGS: u64 = 8;
/// The program's entry point (at its load address).
pub const AT_ENTRY: u64 = 9;
/// Real uid.
pub const AT_UID: u64 = 11;
/// Effective uid.
pub const AT_EUID: u64 = 12;
/// Real gid.
pub const AT_GID: u64 = 13;
/// Effective gid.
pub const AT_EGID: u64 = 14;
/// Address of the platform string.
pub const AT_PLATFORM: u64 = 15;
/// CPU capabilities (x86: CPUID leaf 1 EDX).
pub const AT_HWCAP: u64 = 16;
/// Clock ticks per second (`times`).
pub const AT_CLKTCK: u64 = 17;
/// Secure mode (set-uid): libc ignores dangerous environment variables.
pub const AT_SECURE: u64 = 23;
/// Address of 16 random bytes (libc's stack protector and pointer guard).
pub const AT_RANDOM: u64 = 25;
/// More CPU capabilities (x86: ring-3 MONITOR/MWAIT, FSGSBASE).
pub const AT_HWCAP2: u64 = 26;
/// Address of the file name the program was executed as.
pub const AT_EXECFN: u64 = 31;
/// Minimal stack size for a signal handler (x86: the signal frame size).
pub const AT_MINSIGSTKSZ: u64 = 51;

/// The most that arguments, environment and the file name may take, with
/// their pointers: 2 MiB, the bound Linux applies (a quarter of the
/// default 8 MiB stack limit).
pub const ARG_MAX_BYTES: usize = 2 << 20;

/// The values of the auxiliary vector the caller decides. Addresses are
/// run-time addresses: for a static-pie, `phdr = bias + phdr_vaddr` and
/// `entry = bias + entry` (see [`crate::elf`]); `base` is 0 for a program
/// without an interpreter, as Linux passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auxv {
    /// `AT_PHDR`: where the program headers are in memory.
    pub phdr: u64,
    /// `AT_PHENT`: the size of one program header (56).
    pub phent: u64,
    /// `AT_PHNUM`: the number of program headers.
    pub phnum: u64,
    /// `AT_PAGESZ`: the page size (4096).
    pub pagesz: u64,
    /// `AT_BASE`: the interpreter's load address; 0 for static programs.
    pub base: u64,
    /// `AT_FLAGS`: 0.
    pub flags: u64,
    /// `AT_ENTRY`: the program's entry point.
    pub entry: u64,
    /// `AT_UID`.
    pub uid: u32,
    /// `AT_EUID`.
    pub euid: u32,
    /// `AT_GID`.
    pub gid: u32,
    /// `AT_EGID`.
    pub egid: u32,
    /// `AT_SECURE`.
    pub secure: bool,
    /// `AT_HWCAP`: CPUID leaf 1 EDX of the vCPU.
    pub hwcap: u64,
    /// `AT_HWCAP2`.
    pub hwcap2: u64,
    /// `AT_CLKTCK`: 100 on Linux.
    pub clktck: u64,
    /// The 16 bytes `AT_RANDOM` points at: fresh random bytes for every
    /// program (libc derives its stack canary from them).
    pub random: [u8; 16],
    /// The string `AT_PLATFORM` points at: `"x86_64"`.
    pub platform: &'static str,
    /// `AT_MINSIGSTKSZ`, passed only when given.
    pub minsigstksz: Option<u64>,
}

/// What goes on the initial stack. `S` is any string-like type (`String`,
/// `&str`, `Vec<u8>`, `&[u8]`): arguments need not be UTF-8, but may not
/// contain a NUL byte.
#[derive(Debug, Clone)]
pub struct StackInputs<'a, S: AsRef<[u8]> = String> {
    /// The arguments, `argv[0]` first.
    pub argv: &'a [S],
    /// The environment, as `NAME=value` strings.
    pub envp: &'a [S],
    /// The file name the program was executed as (`AT_EXECFN`).
    pub execfn: &'a str,
    /// The rest of the auxiliary vector.
    pub auxv: Auxv,
}

/// A built initial stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialStack {
    /// The stack's contents, from `rsp` up to `top`: copy them so that they
    /// end just below `top` (the first byte goes to address `rsp`).
    pub bytes: Vec<u8>,
    /// The stack pointer at entry: the address of `argc`, 16-byte aligned.
    pub rsp: u64,
}

/// Why an initial stack cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// An argument holds a NUL byte, which would cut it short.
    #[error("argument {index} contains a NUL byte; arguments are C strings")]
    NulInArgument {
        /// Its position in argv.
        index: usize,
    },
    /// An environment string holds a NUL byte.
    #[error("environment entry {index} contains a NUL byte; the environment is C strings")]
    NulInEnvironment {
        /// Its position in envp.
        index: usize,
    },
    /// The executable's name holds a NUL byte.
    #[error("the program's file name contains a NUL byte")]
    NulInExecfn,
    /// The platform string holds a NUL byte.
    #[error("the platform string contains a NUL byte")]
    NulInPlatform,
    /// Arguments and environment exceed [`ARG_MAX_BYTES`].
    #[error("arguments and environment take {bytes} bytes; at most {max}: shorten them (Linux would fail the same exec with E2BIG)")]
    TooLarge {
        /// What they take: strings with their NULs, and their pointers.
        bytes: usize,
        /// The limit, [`ARG_MAX_BYTES`].
        max: usize,
    },
    /// `top` is too low for the stack to fit below it.
    #[error("the initial stack needs {bytes} bytes below {top:#x}, more than there is")]
    DoesNotFit {
        /// The requested top.
        top: u64,
        /// The stack's size.
        bytes: u64,
    },
}

/// Rounds `x` down to a multiple of 16.
fn align16(x: u64) -> u64 {
    x & !15
}

/// Builds the initial stack that ends at `top` (exclusive).
///
/// Checks the strings before allocating anything, so the allocation is
/// bounded by [`ARG_MAX_BYTES`] plus the fixed parts.
pub fn build<S: AsRef<[u8]>>(
    top: u64,
    inputs: &StackInputs<'_, S>,
) -> Result<InitialStack, StackError> {
    let argv: Vec<&[u8]> = inputs.argv.iter().map(AsRef::as_ref).collect();
    let envp: Vec<&[u8]> = inputs.envp.iter().map(AsRef::as_ref).collect();
    let execfn = inputs.execfn.as_bytes();
    let platform = inputs.auxv.platform.as_bytes();
    let strings = check_strings(&argv, &envp, execfn, platform)?;

    // The entries' number does not depend on the addresses they hold.
    let aux_len = aux_entries(&inputs.auxv, [0; 3]).len();
    // Addresses, from the top down. Every size below is bounded by
    // ARG_MAX_BYTES or is fixed, so only the subtractions from `top` can
    // fail.
    let execfn_len = (execfn.len() + 1) as u64;
    let platform_len = (platform.len() + 1) as u64;
    let words = 1 + argv.len() + 1 + envp.len() + 1 + 2 * aux_len;
    let below =
        8 + execfn_len + strings as u64 + 15 + platform_len + 15 + 16 + 15 + 8 * words as u64;
    if top < below {
        return Err(StackError::DoesNotFit { top, bytes: below });
    }
    let execfn_at = top - 8 - execfn_len;
    let strings_at = execfn_at - strings as u64;
    let platform_at = align16(strings_at) - platform_len;
    let random_at = align16(platform_at) - 16;
    let rsp = align16(random_at - 8 * words as u64);

    let mut bytes = vec![0u8; (top - rsp) as usize];
    let mut put = |addr: u64, data: &[u8]| {
        let at = (addr - rsp) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
    };
    // Strings (the zeroed buffer supplies every NUL and the end marker).
    put(execfn_at, execfn);
    let mut pointers = Vec::with_capacity(argv.len() + envp.len());
    let mut at = strings_at;
    for s in argv.iter().chain(&envp) {
        put(at, s);
        pointers.push(at);
        at += s.len() as u64 + 1;
    }
    put(platform_at, platform);
    put(random_at, &inputs.auxv.random);

    // The vectors.
    let (argv_ptrs, envp_ptrs) = pointers.split_at(argv.len());
    let mut vector: Vec<u64> = Vec::with_capacity(words);
    vector.push(argv.len() as u64);
    vector.extend_from_slice(argv_ptrs);
    vector.push(0);
    vector.extend_from_slice(envp_ptrs);
    vector.push(0);
    for (key, value) in aux_entries(&inputs.auxv, [random_at, execfn_at, platform_at]) {
        vector.extend_from_slice(&[key, value]);
    }
    debug_assert_eq!(vector.len(), words);
    let vector: Vec<u8> = vector.iter().flat_map(|w| w.to_le_bytes()).collect();
    put(rsp, &vector);

    Ok(InitialStack { bytes, rsp })
}

/// Refuses NUL bytes inside strings and a total over [`ARG_MAX_BYTES`];
/// returns the size of the argument and environment strings with their
/// NULs.
fn check_strings(
    argv: &[&[u8]],
    envp: &[&[u8]],
    execfn: &[u8],
    platform: &[u8],
) -> Result<usize, StackError> {
    if let Some(index) = argv.iter().position(|a| a.contains(&0)) {
        return Err(StackError::NulInArgument { index });
    }
    if let Some(index) = envp.iter().position(|e| e.contains(&0)) {
        return Err(StackError::NulInEnvironment { index });
    }
    if execfn.contains(&0) {
        return Err(StackError::NulInExecfn);
    }
    if platform.contains(&0) {
        return Err(StackError::NulInPlatform);
    }
    // What Linux counts against its limit: every string with its NUL, and a
    // pointer for each argument and environment entry.
    let strings: usize = argv
        .iter()
        .chain(envp)
        .fold(0usize, |sum, s| sum.saturating_add(s.len() + 1));
    let counted = strings
        .saturating_add(execfn.len() + 1)
        .saturating_add(8 * (argv.len() + envp.len()));
    if counted > ARG_MAX_BYTES {
        return Err(StackError::TooLarge {
            bytes: counted,
            max: ARG_MAX_BYTES,
        });
    }
    Ok(strings)
}

/// The auxiliary vector in the order Linux writes it, `AT_NULL` last;
/// `at` holds the addresses of the random bytes, the file name and the
/// platform string.
fn aux_entries(a: &Auxv, at: [u64; 3]) -> Vec<(u64, u64)> {
    let [random_at, execfn_at, platform_at] = at;
    let mut v = Vec::with_capacity(20);
    if let Some(size) = a.minsigstksz {
        v.push((AT_MINSIGSTKSZ, size));
    }
    v.extend_from_slice(&[
        (AT_HWCAP, a.hwcap),
        (AT_PAGESZ, a.pagesz),
        (AT_CLKTCK, a.clktck),
        (AT_PHDR, a.phdr),
        (AT_PHENT, a.phent),
        (AT_PHNUM, a.phnum),
        (AT_BASE, a.base),
        (AT_FLAGS, a.flags),
        (AT_ENTRY, a.entry),
        (AT_UID, u64::from(a.uid)),
        (AT_EUID, u64::from(a.euid)),
        (AT_GID, u64::from(a.gid)),
        (AT_EGID, u64::from(a.egid)),
        (AT_SECURE, u64::from(a.secure)),
        (AT_RANDOM, random_at),
        (AT_HWCAP2, a.hwcap2),
        (AT_EXECFN, execfn_at),
        (AT_PLATFORM, platform_at),
        (AT_NULL, 0),
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOP: u64 = 0x7fff_ffff_f000;

    fn auxv() -> Auxv {
        Auxv {
            phdr: 0x40_0040,
            phent: 56,
            phnum: 10,
            pagesz: 4096,
            base: 0,
            flags: 0,
            entry: 0x40_1650,
            uid: 1000,
            euid: 1001,
            gid: 100,
            egid: 101,
            secure: false,
            hwcap: 0x178b_fbff,
            hwcap2: 2,
            clktck: 100,
            random: *b"0123456789abcdef",
            platform: "x86_64",
            minsigstksz: None,
        }
    }

    /// An initial stack read back the way a C runtime reads it.
    #[derive(Debug)]
    struct Decoded {
        argv: Vec<Vec<u8>>,
        argv_at: Vec<u64>,
        envp: Vec<Vec<u8>>,
        auxv: Vec<(u64, u64)>,
    }

    fn word(s: &InitialStack, top: u64, addr: u64) -> u64 {
        assert!(
            addr >= s.rsp && addr + 8 <= top,
            "{addr:#x} is outside the stack"
        );
        let at = (addr - s.rsp) as usize;
        u64::from_le_bytes(s.bytes[at..at + 8].try_into().unwrap())
    }

    fn c_string(s: &InitialStack, top: u64, addr: u64) -> Vec<u8> {
        assert!(
            addr >= s.rsp && addr < top,
            "{addr:#x} is outside the stack"
        );
        let from = &s.bytes[(addr - s.rsp) as usize..];
        let len = from.iter().position(|&b| b == 0).expect("NUL-terminated");
        from[..len].to_vec()
    }

    fn bytes_at(s: &InitialStack, addr: u64, len: usize) -> &[u8] {
        let at = (addr - s.rsp) as usize;
        &s.bytes[at..at + len]
    }

    fn decode(s: &InitialStack, top: u64) -> Decoded {
        assert_eq!(s.rsp % 16, 0, "rsp is 16-byte aligned at entry");
        assert_eq!(s.rsp + s.bytes.len() as u64, top, "the bytes end at top");
        assert_eq!(word(s, top, top - 8), 0, "the end marker");
        let mut at = s.rsp;
        let mut next = || {
            let w = word(s, top, at);
            at += 8;
            w
        };
        let argc = next();
        let argv_at: Vec<u64> = (0..argc).map(|_| next()).collect();
        assert_eq!(next(), 0, "argv ends with NULL");
        let mut envp_at = Vec::new();
        loop {
            match next() {
                0 => break,
                p => envp_at.push(p),
            }
        }
        let mut auxv = Vec::new();
        loop {
            let (key, value) = (next(), next());
            auxv.push((key, value));
            if key == AT_NULL {
                break;
            }
        }
        Decoded {
            argv: argv_at.iter().map(|&p| c_string(s, top, p)).collect(),
            argv_at,
            envp: envp_at.iter().map(|&p| c_string(s, top, p)).collect(),
            auxv,
        }
    }

    fn aux(d: &Decoded, key: u64) -> Option<u64> {
        d.auxv.iter().find(|&&(k, _)| k == key).map(|&(_, v)| v)
    }

    #[test]
    fn a_stack_decodes_back_to_its_arguments_environment_and_auxv() {
        let argv = ["/bin/prog", "-x", "an argument with spaces", ""].map(String::from);
        let envp = ["HOME=/root", "EMPTY="].map(String::from);
        let inputs = StackInputs {
            argv: &argv,
            envp: &envp,
            execfn: "/bin/prog",
            auxv: auxv(),
        };
        let s = build(TOP, &inputs).unwrap();
        let d = decode(&s, TOP);
        assert_eq!(d.argv, argv.map(String::into_bytes).to_vec());
        assert_eq!(d.envp, envp.map(String::into_bytes).to_vec());

        let keys: Vec<u64> = d.auxv.iter().map(|&(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                AT_HWCAP,
                AT_PAGESZ,
                AT_CLKTCK,
                AT_PHDR,
                AT_PHENT,
                AT_PHNUM,
                AT_BASE,
                AT_FLAGS,
                AT_ENTRY,
                AT_UID,
                AT_EUID,
                AT_GID,
                AT_EGID,
                AT_SECURE,
                AT_RANDOM,
                AT_HWCAP2,
                AT_EXECFN,
                AT_PLATFORM,
                AT_NULL
            ],
            "Linux's order, and no AT_SYSINFO_EHDR (no vDSO) nor AT_MINSIGSTKSZ (not given)"
        );
        let a = auxv();
        for (key, value) in [
            (AT_HWCAP, a.hwcap),
            (AT_PAGESZ, 4096),
            (AT_CLKTCK, 100),
            (AT_PHDR, a.phdr),
            (AT_PHENT, 56),
            (AT_PHNUM, 10),
            (AT_BASE, 0),
            (AT_FLAGS, 0),
            (AT_ENTRY, a.entry),
            (AT_UID, 1000),
            (AT_EUID, 1001),
            (AT_GID, 100),
            (AT_EGID, 101),
            (AT_SECURE, 0),
            (AT_HWCAP2, 2),
            (AT_NULL, 0),
        ] {
            assert_eq!(aux(&d, key), Some(value), "auxv entry {key}");
        }
        assert_eq!(
            bytes_at(&s, aux(&d, AT_RANDOM).unwrap(), 16),
            b"0123456789abcdef"
        );
        assert_eq!(c_string(&s, TOP, aux(&d, AT_PLATFORM).unwrap()), b"x86_64");
        assert_eq!(c_string(&s, TOP, aux(&d, AT_EXECFN).unwrap()), b"/bin/prog");
    }

    #[test]
    fn strings_sit_in_order_above_the_vectors_as_linux_lays_them_out() {
        let argv = ["a", "bb", "ccc"].map(String::from);
        let envp = ["X=1"].map(String::from);
        let inputs = StackInputs {
            argv: &argv,
            envp: &envp,
            execfn: "/p",
            auxv: auxv(),
        };
        let s = build(TOP, &inputs).unwrap();
        let d = decode(&s, TOP);
        assert_eq!(d.argv_at[1], d.argv_at[0] + 2);
        assert_eq!(d.argv_at[2], d.argv_at[1] + 3);
        let execfn = aux(&d, AT_EXECFN).unwrap();
        assert_eq!(execfn, TOP - 8 - 3, "the file name is the highest string");
        assert!(aux(&d, AT_RANDOM).unwrap() < aux(&d, AT_PLATFORM).unwrap());
        assert!(aux(&d, AT_PLATFORM).unwrap() < d.argv_at[0]);
        assert_eq!(aux(&d, AT_RANDOM).unwrap() % 16, 0);
    }

    #[test]
    fn minsigstksz_comes_first_when_given() {
        let mut a = auxv();
        a.minsigstksz = Some(3632);
        let argv = ["p".to_string()];
        let s = build(
            TOP,
            &StackInputs {
                argv: &argv,
                envp: &[],
                execfn: "p",
                auxv: a,
            },
        )
        .unwrap();
        let d = decode(&s, TOP);
        assert_eq!(d.auxv[0], (AT_MINSIGSTKSZ, 3632));
    }

    #[test]
    fn no_arguments_and_no_environment_is_argc_zero() {
        let none: [&str; 0] = [];
        let s = build(
            TOP,
            &StackInputs {
                argv: &none,
                envp: &none,
                execfn: "",
                auxv: auxv(),
            },
        )
        .unwrap();
        let d = decode(&s, TOP);
        assert!(d.argv.is_empty() && d.envp.is_empty());
        assert_eq!(word(&s, TOP, s.rsp), 0);
    }

    #[test]
    fn arguments_may_be_bytes_that_are_not_utf8() {
        let argv = [vec![0xff, 0xfe, b'x'], b"plain".to_vec()];
        let envp = [b"K=\xc3".to_vec()];
        let s = build(
            TOP,
            &StackInputs {
                argv: &argv,
                envp: &envp,
                execfn: "p",
                auxv: auxv(),
            },
        )
        .unwrap();
        let d = decode(&s, TOP);
        assert_eq!(d.argv, argv.to_vec());
        assert_eq!(d.envp, envp.to_vec());
    }

    #[test]
    fn an_unaligned_top_still_gives_an_aligned_rsp() {
        for top in [TOP - 1, TOP - 7, TOP - 9, 0x1_0000 + 3] {
            let argv = ["prog".to_string()];
            let s = build(
                top,
                &StackInputs {
                    argv: &argv,
                    envp: &[],
                    execfn: "prog",
                    auxv: auxv(),
                },
            )
            .unwrap();
            decode(&s, top);
        }
    }

    #[test]
    fn a_nul_byte_in_any_string_is_refused_naming_it() {
        let good = ["ok".to_string()];
        let bad = ["ok".to_string(), "a\0b".to_string()];
        let e = build(
            TOP,
            &StackInputs {
                argv: &bad,
                envp: &good,
                execfn: "p",
                auxv: auxv(),
            },
        )
        .unwrap_err();
        assert_eq!(e, StackError::NulInArgument { index: 1 });
        assert!(e.to_string().contains("argument 1 contains a NUL byte"));
        let e = build(
            TOP,
            &StackInputs {
                argv: &good,
                envp: &bad,
                execfn: "p",
                auxv: auxv(),
            },
        )
        .unwrap_err();
        assert_eq!(e, StackError::NulInEnvironment { index: 1 });
        let e = build(
            TOP,
            &StackInputs {
                argv: &good,
                envp: &good,
                execfn: "p\0",
                auxv: auxv(),
            },
        )
        .unwrap_err();
        assert_eq!(e, StackError::NulInExecfn);
        let mut a = auxv();
        a.platform = "x86\0";
        let e = build(
            TOP,
            &StackInputs {
                argv: &good,
                envp: &good,
                execfn: "p",
                auxv: a,
            },
        )
        .unwrap_err();
        assert_eq!(e, StackError::NulInPlatform);
    }

    #[test]
    fn arguments_over_the_limit_are_refused_with_both_sizes() {
        // One argument, the file name "p" and one pointer: exactly the limit.
        let fits = ["x".repeat(ARG_MAX_BYTES - 1 - 2 - 8)];
        let s = build(
            TOP,
            &StackInputs {
                argv: &fits,
                envp: &[],
                execfn: "p",
                auxv: auxv(),
            },
        )
        .unwrap();
        assert_eq!(decode(&s, TOP).argv[0].len(), fits[0].len());
        let over = ["x".repeat(ARG_MAX_BYTES - 2 - 8)];
        let e = build(
            TOP,
            &StackInputs {
                argv: &over,
                envp: &[],
                execfn: "p",
                auxv: auxv(),
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            StackError::TooLarge {
                bytes: ARG_MAX_BYTES + 1,
                max: ARG_MAX_BYTES
            }
        );
        assert!(e
            .to_string()
            .starts_with("arguments and environment take 2097153 bytes; at most 2097152"));
        // Many small entries count their pointers too.
        let many = vec![String::new(); ARG_MAX_BYTES / 9 + 1];
        assert!(matches!(
            build(
                TOP,
                &StackInputs {
                    argv: &[] as &[String],
                    envp: &many,
                    execfn: "",
                    auxv: auxv()
                }
            ),
            Err(StackError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_top_too_low_is_refused() {
        let argv = ["prog".to_string()];
        for top in [0, 8, 100] {
            let e = build(
                top,
                &StackInputs {
                    argv: &argv,
                    envp: &[],
                    execfn: "prog",
                    auxv: auxv(),
                },
            )
            .unwrap_err();
            assert!(matches!(e, StackError::DoesNotFit { top: t, .. } if t == top));
        }
    }

    proptest! {
        #[test]
        fn any_arguments_decode_back(
            argv in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..40), 0..12),
            envp in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..40), 0..12),
            execfn in "[a-z/]{0,30}",
            top in 0x1_0000u64..(1 << 47),
            minsig in proptest::option::of(any::<u64>()),
        ) {
            let mut a = auxv();
            a.minsigstksz = minsig;
            let s = build(top, &StackInputs { argv: &argv, envp: &envp, execfn: &execfn, auxv: a }).unwrap();
            let d = decode(&s, top);
            prop_assert_eq!(&d.argv, &argv);
            prop_assert_eq!(&d.envp, &envp);
            prop_assert_eq!(c_string(&s, top, aux(&d, AT_EXECFN).unwrap()), execfn.into_bytes());
            prop_assert_eq!(aux(&d, AT_MINSIGSTKSZ), minsig);
            prop_assert!(s.bytes.len() < 64 << 10);
        }
    }
}
