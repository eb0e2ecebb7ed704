//! x86-64 state of a vCPU entering an app directly in long mode at CPL3:
//! the system tables (GDT in Linux's layout, a 64-bit TSS, an IDT whose
//! exception handlers halt so the monitor sees the fault) and the registers.
//! No real-mode boot, no guest kernel (lwk-notes.md: "Set-up that worked").

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcrs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::layout::{HANDLERS_OFF, HANDLER_STRIDE, IDT_OFF, PAGE, SYS_VA, TSS_IN_PAGE};
use crate::LwkError;

/// Kernel code segment selector (Linux's `__KERNEL_CS`).
pub const KERNEL_CS: u16 = 0x10;
/// User data segment selector (Linux's `__USER_DS`).
pub const USER_DS: u16 = 0x2b;
/// User 64-bit code segment selector (Linux's `__USER_CS`).
pub const USER_CS: u16 = 0x33;
/// The TSS selector.
pub const TSS_SEL: u16 = 0x40;

/// The GDT, Linux's layout: null, (unused), kernel code, kernel data,
/// user32 code, user data, user64 code, (unused), then the 16-byte TSS
/// descriptor filled per vCPU.
const GDT: [u64; 8] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // 0x10 kernel code, 64-bit
    0x00cf_9300_0000_ffff, // 0x18 kernel data
    0x00cf_fb00_0000_ffff, // 0x23 user code, 32-bit
    0x00cf_f300_0000_ffff, // 0x2b user data
    0x00af_fb00_0000_ffff, // 0x33 user code, 64-bit
    0,
];

/// Exceptions that push an error code (the handler then pushes only the vector).
const WITH_ERROR_CODE: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// How many vectors have a handler (the CPU's exceptions).
pub const HANDLED_VECTORS: u64 = 32;

/// The IDT page: 32 interrupt gates to the handlers, each on IST1.
pub fn idt_page() -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    for v in 0..HANDLED_VECTORS {
        let handler = SYS_VA + HANDLERS_OFF + v * HANDLER_STRIDE;
        let gate = (IDT_OFF + v * 16) as usize;
        let g = &mut p[gate..gate + 16];
        g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        g[2..4].copy_from_slice(&KERNEL_CS.to_le_bytes());
        g[4] = 1; // IST1: always a known stack, whatever the CPL was
                  // DPL 3 so `int3` from user code reaches its handler like
                  // any fault (and is reported as a breakpoint).
        g[5] = 0xee; // present, DPL 3, 64-bit interrupt gate
        g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    }
    p
}

/// The handlers page: per vector, push a zero error code where the CPU
/// pushes none, push the vector, `hlt`. The monitor sees `KVM_EXIT_HLT`,
/// learns the vector from RIP and reads the frame from the stack.
pub fn handlers_page() -> Vec<u8> {
    let mut p = vec![0xf4u8; PAGE as usize];
    for v in 0..HANDLED_VECTORS as u8 {
        let at = (v as u64 * HANDLER_STRIDE) as usize;
        let mut code = Vec::new();
        if !WITH_ERROR_CODE.contains(&v) {
            code.extend([0x6a, 0x00]); // push 0
        }
        code.extend([0x6a, v]); // push v
        code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
        p[at..at + code.len()].copy_from_slice(&code);
    }
    p
}

/// The vector whose handler a halted vCPU's RIP is in.
pub fn vector_of_halt(rip: u64) -> Option<u8> {
    let base = SYS_VA + HANDLERS_OFF;
    let v = rip.checked_sub(base)? / HANDLER_STRIDE;
    (v < HANDLED_VECTORS).then_some(v as u8)
}

/// A vCPU's GDT page: the GDT, then its TSS at [`TSS_IN_PAGE`] with IST1
/// (and RSP0) at the top of the exception stack at `exc_stack_top`.
pub fn gdt_page(gdt_va: u64, exc_stack_top: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE as usize];
    for (i, d) in GDT.iter().enumerate() {
        p[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    let tss = gdt_va + TSS_IN_PAGE;
    let limit: u64 = 0x67;
    let low = (limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    let high = tss >> 32;
    p[64..72].copy_from_slice(&low.to_le_bytes());
    p[72..80].copy_from_slice(&high.to_le_bytes());
    let t = TSS_IN_PAGE as usize;
    p[t + 4..t + 12].copy_from_slice(&exc_stack_top.to_le_bytes()); // RSP0
    p[t + 36..t + 44].copy_from_slice(&exc_stack_top.to_le_bytes()); // IST1
    p[t + 102..t + 104].copy_from_slice(&0x68u16.to_le_bytes()); // no I/O bitmap
    p
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Where a vCPU's system structures are, as virtual addresses.
#[derive(Debug, Clone, Copy)]
pub struct SystemTables {
    /// Its GDT page (TSS inside).
    pub gdt_va: u64,
    /// Its stub page (`MSR_LSTAR`).
    pub stub_va: u64,
}

/// Set the special registers for user mode in long mode under `cr3`.
pub fn set_sregs(vcpu: &VcpuFd, cr3: u64, t: &SystemTables, fs_base: u64) -> Result<(), LwkError> {
    let mut s: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = segment(USER_CS, true);
    let data = segment(USER_DS, false);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.ss = data;
    s.fs = kvm_segment {
        base: fs_base,
        ..data
    };
    s.gs = data;
    s.tr = kvm_segment {
        base: t.gdt_va + TSS_IN_PAGE,
        limit: 0x67,
        selector: TSS_SEL,
        type_: 11, // busy 64-bit TSS
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = t.gdt_va;
    s.gdt.limit = 10 * 8 - 1;
    s.idt.base = SYS_VA + IDT_OFF;
    s.idt.limit = 256 * 16 - 1;
    // PE MP ET NE WP PG
    s.cr0 = 1 | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
    // PAE OSFXSR OSXMMEXCPT FSGSBASE OSXSAVE
    s.cr4 = (1 << 5) | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 18);
    s.cr3 = cr3;
    // SCE LME LMA NXE
    s.efer = 1 | (1 << 8) | (1 << 10) | (1 << 11);
    vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))
}

/// `MSR_LSTAR`, `MSR_STAR`, `MSR_SYSCALL_MASK`: `syscall` jumps to the stub.
pub fn set_syscall_msrs(vcpu: &VcpuFd, stub_va: u64) -> Result<(), LwkError> {
    const STAR: u32 = 0xc000_0081;
    const LSTAR: u32 = 0xc000_0082;
    const SFMASK: u32 = 0xc000_0084;
    // STAR[47:32]: kernel CS (SS = +8); STAR[63:48]: user base (sysret CS =
    // +16 = 0x33, SS = +8 = 0x2b), Linux's values.
    let star = ((0x23u64) << 48) | ((KERNEL_CS as u64) << 32);
    let entries = [
        kvm_msr_entry {
            index: STAR,
            data: star,
            ..Default::default()
        },
        kvm_msr_entry {
            index: LSTAR,
            data: stub_va,
            ..Default::default()
        },
        // No flag is masked: on the hardware path the stub runs with the
        // user's flags (no interrupts can arrive: there is no irqchip).
        kvm_msr_entry {
            index: SFMASK,
            data: 0,
            ..Default::default()
        },
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|e| LwkError::Kvm(format!("MSRs: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(LwkError::Kvm(format!(
            "KVM_SET_MSRS set {n} of {} syscall MSRs",
            entries.len()
        )));
    }
    Ok(())
}

/// FPU and SSE control words as Linux starts a process; XCR0 as `xcr0`.
/// With `reset_xsave`, every extended state component (AVX, AVX-512) goes
/// back to its initial state first: a reused vCPU must not show one app the
/// vector registers another app left.
pub fn set_fpu(vcpu: &VcpuFd, xcr0: u64, reset_xsave: bool) -> Result<(), LwkError> {
    if reset_xsave {
        // An XSAVE header with XSTATE_BV 0: every component in its init state.
        let xsave = kvm_bindings::kvm_xsave::default();
        // SAFETY: the caller checked that KVM_CAP_XSAVE2 reports at most
        // size_of::<kvm_xsave>() bytes, so KVM reads only within `xsave`.
        unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = xcr0;
    vcpu.set_xcrs(&xcrs).map_err(kvm("KVM_SET_XCRS"))
}

/// General registers to enter user code at `rip` with stack `rsp`.
pub fn user_regs(rip: u64, rsp: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rsp,
        rflags: 0x202,
        ..Default::default()
    }
}

/// Map a KVM ioctl error to ours, naming the ioctl.
pub fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> LwkError {
    move |e| LwkError::Kvm(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_are_found_by_rip() {
        let p = handlers_page();
        // #DE has no error code: push 0, push 0, hlt.
        assert_eq!(&p[0..5], &[0x6a, 0, 0x6a, 0, 0xf4]);
        // #PF has one: push 14, hlt.
        let pf = (14 * HANDLER_STRIDE) as usize;
        assert_eq!(&p[pf..pf + 3], &[0x6a, 14, 0xf4]);
        let hlt_of_pf = SYS_VA + HANDLERS_OFF + 14 * HANDLER_STRIDE + 2;
        assert_eq!(vector_of_halt(hlt_of_pf), Some(14));
        assert_eq!(vector_of_halt(SYS_VA), None);
    }

    #[test]
    fn tss_descriptor_points_at_the_tss() {
        let gdt_va = SYS_VA + 0x2000;
        let p = gdt_page(gdt_va, 0x1234_5000);
        let low = u64::from_le_bytes(p[64..72].try_into().unwrap());
        let base = ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24);
        let high = u64::from_le_bytes(p[72..80].try_into().unwrap());
        assert_eq!(base | (high << 32), gdt_va + TSS_IN_PAGE);
        let t = TSS_IN_PAGE as usize;
        assert_eq!(
            u64::from_le_bytes(p[t + 36..t + 44].try_into().unwrap()),
            0x1234_5000
        );
    }
}
