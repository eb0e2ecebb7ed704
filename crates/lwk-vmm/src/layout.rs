//! Where things are: the guest-physical and guest-virtual layout shared by
//! every app of an LWK.
//!
//! Guest-physical memory is the enclave's RAM from 0, handed out in 2 MiB
//! chunks. Chunk 0 is the *system area*: the IDT, the exception handlers and
//! three pages per vCPU (its GDT and TSS, its exception stack, its system-call
//! stub and mailbox). Apps see the system area at [`SYS_VA`] through 4 KiB
//! pages of their own page tables, which map only their own vCPUs' pages.
//!
//! An app's virtual layout is Linux's: the program at its link address (a
//! static-pie at [`PIE_BASE`]), its brk heap after it, mmaps top-down from
//! [`MMAP_TOP`], the main stack under [`STACK_TOP`]. The first 2 MiB are never
//! mapped, so a null pointer faults.

/// A base page.
pub const PAGE: u64 = 4096;
/// A large page: the unit of guest memory (Kitten maps with large pages).
pub const HUGE: u64 = 2 << 20;

/// Virtual address of the system area in every app.
pub const SYS_VA: u64 = 0x7fff_ffc0_0000;
/// Virtual address of the doorbell: a user page mapped to guest-physical
/// memory with no memory behind it, so a store there exits to the monitor.
pub const DOORBELL_VA: u64 = SYS_VA - HUGE;
/// Top of the main thread's stack (exclusive).
pub const STACK_TOP: u64 = 0x7fff_fe00_0000;
/// Size of the main thread's stack, allocated whole at launch.
pub const STACK_SIZE: u64 = 8 << 20;
/// Top (exclusive) of the area mmaps are placed in, top-down.
pub const MMAP_TOP: u64 = 0x7ff0_0000_0000;
/// Bottom of the mmap area.
pub const MMAP_BOTTOM: u64 = 0x6000_0000_0000;
/// Where a static-pie program is loaded (a multiple of 2 MiB, like Linux's
/// `ELF_ET_DYN_BASE` region).
pub const PIE_BASE: u64 = 0x5555_5540_0000;
/// Lowest address a program may be linked at: the first 2 MiB stay unmapped.
pub const LOWEST_USER: u64 = HUGE;

/// System area page: the IDT (256 gates of 16 bytes).
pub const IDT_OFF: u64 = 0;
/// System area page: the exception handlers, [`HANDLER_STRIDE`] bytes each.
pub const HANDLERS_OFF: u64 = PAGE;
/// Bytes per exception handler.
pub const HANDLER_STRIDE: u64 = 16;
/// First per-vCPU page in the system area.
pub const VCPU_PAGES_OFF: u64 = 2 * PAGE;
/// Pages per vCPU: GDT+TSS, exception stack, stub+mailbox.
pub const PAGES_PER_VCPU: u64 = 3;
/// Most vCPUs one LWK can have (the system area's size bounds it).
pub const MAX_VCPUS: usize = ((HUGE - VCPU_PAGES_OFF) / (PAGES_PER_VCPU * PAGE)) as usize;

/// Offsets of a vCPU's pages in the system area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuPages {
    /// Its GDT (first 128 bytes) and TSS (at [`TSS_IN_PAGE`]).
    pub gdt: u64,
    /// Its exception stack (the TSS's IST1 points at its top).
    pub exc_stack: u64,
    /// Its system-call stub, followed in the same page by its mailbox.
    pub stub: u64,
}

/// Where the TSS sits in a vCPU's GDT page.
pub const TSS_IN_PAGE: u64 = 0x800;

impl VcpuPages {
    /// The pages of vCPU slot `slot` (0-based, below [`MAX_VCPUS`]).
    pub fn of(slot: usize) -> VcpuPages {
        let base = VCPU_PAGES_OFF + slot as u64 * PAGES_PER_VCPU * PAGE;
        VcpuPages {
            gdt: base,
            exc_stack: base + PAGE,
            stub: base + 2 * PAGE,
        }
    }
}

// The regions do not overlap, and the system area holds enough vCPUs.
const _: () = assert!(STACK_TOP <= DOORBELL_VA);
const _: () = assert!(MMAP_TOP <= STACK_TOP - STACK_SIZE);
const _: () = assert!(PIE_BASE < MMAP_BOTTOM);
const _: () = assert!(MAX_VCPUS >= 128);

/// Round `x` up to a multiple of `align` (a power of two).
pub fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

/// Round `x` down to a multiple of `align` (a power of two).
pub fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap() {
        for a in [
            SYS_VA,
            DOORBELL_VA,
            STACK_TOP,
            MMAP_TOP,
            MMAP_BOTTOM,
            PIE_BASE,
        ] {
            assert_eq!(a % HUGE, 0, "{a:#x}");
        }
        let last = VcpuPages::of(MAX_VCPUS - 1);
        assert!(last.stub + PAGE <= HUGE);
    }
}
