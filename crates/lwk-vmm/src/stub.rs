//! The system-call stub: guest code every vCPU's `MSR_LSTAR` points at.
//!
//! A guest `syscall` jumps here. Under this machine's PVM `/dev/kvm` it stays
//! at CPL3 (so the stub sits on a user page); under hardware KVM it enters
//! CPL0 and the stub returns with `sysretq` (it tests CS itself: that path
//! is not exercised on this machine). `syscall` does not switch stacks, so
//! the stub never touches the stack: the user's red zone (the 128 bytes
//! below `rsp`) stays intact.
//!
//! The stub serves `arch_prctl(ARCH_SET_FS)` and `arch_prctl(ARCH_GET_FS)`
//! itself (`wrfsbase`, `rdfsbase`) and hands
//! every other call to the monitor through the mailbox in the second half of
//! its own page (RIP-relative, so each vCPU's copy finds its own):
//!
//! - **fast path**: when the proxy thread is awake and the call is not one
//!   that must run on the vCPU's thread (may block, needs the vCPU's
//!   registers), it sets the state to REQUESTED and spins until the proxy
//!   answers (DONE) — about the cost of the trap itself (31 µs a call on
//!   this node, where the trap is 30 µs);
//! - **exit path**: otherwise, or when the proxy does not claim the call in
//!   time, or bounces it (BOUNCE: it turned out to block), the stub stores to
//!   the doorbell, a page with no memory behind it: KVM exits to the vCPU's
//!   own thread, which performs the call and resumes the guest (≥32 µs here).
//!
//! Linux's convention is kept: `rax` returns the result, `rcx` and `r11`
//! are clobbered (they hold the return address and flags), every other
//! register is preserved.

use crate::layout::PAGE;

// The stub, assembled into our own binary and copied into each vCPU's page.
// Offsets below must match the `.set` lines.
core::arch::global_asm!(
    ".pushsection .rodata.hobbes_lwk_stub,\"a\"",
    ".balign 4096",
    ".globl hobbes_lwk_stub_start",
    ".globl hobbes_lwk_stub_end",
    "hobbes_lwk_stub_start:",
    ".set HLWK_STATE, hobbes_lwk_stub_start + 0x800",
    ".set HLWK_PROXY, hobbes_lwk_stub_start + 0x804",
    ".set HLWK_NR, hobbes_lwk_stub_start + 0x808",
    ".set HLWK_A0, hobbes_lwk_stub_start + 0x810",
    ".set HLWK_A1, hobbes_lwk_stub_start + 0x818",
    ".set HLWK_A2, hobbes_lwk_stub_start + 0x820",
    ".set HLWK_A3, hobbes_lwk_stub_start + 0x828",
    ".set HLWK_A4, hobbes_lwk_stub_start + 0x830",
    ".set HLWK_A5, hobbes_lwk_stub_start + 0x838",
    ".set HLWK_RET, hobbes_lwk_stub_start + 0x840",
    ".set HLWK_RIP, hobbes_lwk_stub_start + 0x848",
    ".set HLWK_RFLAGS, hobbes_lwk_stub_start + 0x850",
    ".set HLWK_DOORBELL, hobbes_lwk_stub_start + 0x858",
    ".set HLWK_SPIN, hobbes_lwk_stub_start + 0x860",
    ".set HLWK_CS, hobbes_lwk_stub_start + 0x868",
    ".set HLWK_EXITMAP, hobbes_lwk_stub_start + 0x880",
    "    mov qword ptr [rip + HLWK_RIP], rcx",
    "    mov qword ptr [rip + HLWK_RFLAGS], r11",
    // arch_prctl(ARCH_SET_FS, base) and arch_prctl(ARCH_GET_FS, &base):
    // served here, no monitor involved (a bad pointer for GET_FS faults in
    // the stub and ends the app as a fault, where Linux says EFAULT).
    "    cmp rax, 158",
    "    jne 2f",
    "    cmp rdi, 0x1002",
    "    jne 11f",
    "    wrfsbase rsi",
    "    xor eax, eax",
    "    jmp 7f",
    "11:",
    "    cmp rdi, 0x1003",
    "    jne 2f",
    "    rdfsbase rcx",
    "    mov qword ptr [rsi], rcx",
    "    xor eax, eax",
    "    jmp 7f",
    "2:",
    "    mov qword ptr [rip + HLWK_NR], rax",
    "    mov qword ptr [rip + HLWK_A0], rdi",
    "    mov qword ptr [rip + HLWK_A1], rsi",
    "    mov qword ptr [rip + HLWK_A2], rdx",
    "    mov qword ptr [rip + HLWK_A3], r10",
    "    mov qword ptr [rip + HLWK_A4], r8",
    "    mov qword ptr [rip + HLWK_A5], r9",
    "    cmp rax, 512",
    "    jae 5f",
    "    bt qword ptr [rip + HLWK_EXITMAP], rax",
    "    jc 5f",
    "    cmp dword ptr [rip + HLWK_PROXY], 0",
    "    je 5f",
    // Fast path: post, then spin for the proxy's answer.
    "    mov dword ptr [rip + HLWK_STATE], 1",
    "    mov rcx, qword ptr [rip + HLWK_SPIN]",
    "3:",
    "    nop",
    "    mov eax, dword ptr [rip + HLWK_STATE]",
    "    cmp eax, 3",
    "    je 4f",
    "    cmp eax, 5",
    "    je 5f",
    "    dec rcx",
    "    jnz 3b",
    // No answer in time: take the call back (REQUESTED -> EXITING) unless
    // the proxy claimed it meanwhile; then wait for its answer or bounce.
    "    mov eax, 1",
    "    mov r11d, 4",
    "    lock cmpxchg dword ptr [rip + HLWK_STATE], r11d",
    "    je 6f",
    "8:",
    "    nop",
    "    mov eax, dword ptr [rip + HLWK_STATE]",
    "    cmp eax, 5",
    "    je 5f",
    "    cmp eax, 3",
    "    jne 8b",
    "4:",
    "    mov rax, qword ptr [rip + HLWK_RET]",
    "    mov dword ptr [rip + HLWK_STATE], 0",
    "    jmp 7f",
    // Exit path: the vCPU's thread performs the call.
    "5:",
    "    mov dword ptr [rip + HLWK_STATE], 4",
    "6:",
    "    mov rcx, qword ptr [rip + HLWK_DOORBELL]",
    "    mov dword ptr [rcx], eax",
    "    mov rax, qword ptr [rip + HLWK_RET]",
    "7:",
    "    mov rcx, qword ptr [rip + HLWK_RIP]",
    "    mov r11, qword ptr [rip + HLWK_RFLAGS]",
    // Entered at CPL0 (hardware KVM): only sysretq returns to CPL3.
    "    mov word ptr [rip + HLWK_CS], cs",
    "    test byte ptr [rip + HLWK_CS], 3",
    "    jnz 9f",
    "    sysretq",
    "9:",
    "    jmp qword ptr [rip + HLWK_RIP]",
    "hobbes_lwk_stub_end:",
    ".popsection",
);

extern "C" {
    static hobbes_lwk_stub_start: u8;
    static hobbes_lwk_stub_end: u8;
}

/// Mailbox offsets in a vCPU's stub page (see the `.set` lines above).
pub mod mailbox {
    /// u32: the call's state, one of the `STATE_*` values.
    pub const STATE: u64 = 0x800;
    /// u32: non-zero while the proxy thread polls (written by the monitor).
    pub const PROXY_AWAKE: u64 = 0x804;
    /// u64: the call number.
    pub const NR: u64 = 0x808;
    /// 6 x u64: the arguments (rdi, rsi, rdx, r10, r8, r9).
    pub const ARGS: u64 = 0x810;
    /// u64: the result.
    pub const RET: u64 = 0x840;
    /// u64: the user's return address (rcx at `syscall`).
    pub const RIP: u64 = 0x848;
    /// u64: the user's flags (r11 at `syscall`).
    pub const RFLAGS: u64 = 0x850;
    /// u64: the doorbell's virtual address.
    pub const DOORBELL: u64 = 0x858;
    /// u64: how many `pause` iterations to wait for the proxy.
    pub const SPIN: u64 = 0x860;
    /// 512-bit map: calls that always take the exit path.
    pub const EXIT_MAP: u64 = 0x880;

    /// No call in flight.
    pub const STATE_IDLE: u32 = 0;
    /// Posted for the proxy.
    pub const STATE_REQUESTED: u32 = 1;
    /// The proxy is performing it.
    pub const STATE_CLAIMED: u32 = 2;
    /// The proxy answered in `RET`.
    pub const STATE_DONE: u32 = 3;
    /// Taken through the exit path (set by the stub only).
    #[allow(dead_code)]
    pub const STATE_EXITING: u32 = 4;
    /// The proxy handed it back: it must run on the vCPU's thread.
    pub const STATE_BOUNCE: u32 = 5;
}

/// The stub's machine code.
pub fn code() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm! above, in one
    // section, start before end; the bytes between them are the assembled
    // stub, immutable (.rodata) for the program's life.
    unsafe {
        let start = std::ptr::addr_of!(hobbes_lwk_stub_start);
        let end = std::ptr::addr_of!(hobbes_lwk_stub_end);
        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// A vCPU's stub page: the code, then the mailbox initialised.
pub fn page(doorbell_va: u64, spin: u64, exit_calls: &[u64]) -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    let c = code();
    p[..c.len()].copy_from_slice(c);
    let put = |p: &mut Vec<u8>, off: u64, v: u64| {
        p[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(&mut p, mailbox::DOORBELL, doorbell_va);
    put(&mut p, mailbox::SPIN, spin.max(1));
    for &nr in exit_calls {
        if nr < 512 {
            let byte = (mailbox::EXIT_MAP + nr / 8) as usize;
            p[byte] |= 1 << (nr % 8);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_fits_before_its_mailbox() {
        let c = code();
        assert!(
            c.len() > 64 && (c.len() as u64) < mailbox::STATE,
            "{}",
            c.len()
        );
        // It ends with an indirect jump through the saved return address.
        assert_eq!(&c[c.len() - 6..c.len() - 4], &[0xff, 0x25]);
    }

    #[test]
    fn the_page_carries_the_exit_map() {
        let p = page(0x1000, 10, &[0, 202, 511, 9999]);
        let map = &p[mailbox::EXIT_MAP as usize..];
        assert_eq!(map[0] & 1, 1);
        assert_eq!(map[202 / 8] & (1 << (202 % 8)), 1 << (202 % 8));
        assert_eq!(map[63] & 0x80, 0x80);
        assert_eq!(
            u64::from_le_bytes(p[0x858..0x860].try_into().unwrap()),
            0x1000
        );
    }
}
