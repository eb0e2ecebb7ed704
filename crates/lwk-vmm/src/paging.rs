//! An app's page tables (x86-64, 4 levels), built by the monitor in guest RAM.
//!
//! App memory is mapped with 2 MiB pages only (Kitten's policy: no demand
//! paging, no small pages for data); the system area is mapped with 4 KiB
//! pages so an app sees only its own vCPUs' pages. Mappings are only ever
//! added while an app runs, never changed or removed (`munmap` keeps the
//! backing for reuse), so no vCPU can hold a stale translation and no TLB
//! shootdown is needed. Everything is freed when the app ends.

use crate::layout::{HUGE, PAGE};
use crate::ram::GuestRam;
use crate::LwkError;

/// Present.
const P: u64 = 1;
/// Writable.
const RW: u64 = 1 << 1;
/// User-accessible.
const US: u64 = 1 << 2;
/// A large page (in a page directory entry).
const PS: u64 = 1 << 7;
/// Physical address bits of an entry.
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Who may touch a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// App code and data: user, writable.
    User,
    /// Only the CPU itself (GDT, TSS, IDT, exception stacks): supervisor.
    System,
}

/// One app's page tables.
pub struct PageTables {
    /// Guest-physical address of the PML4 (the app's CR3).
    pub root: u64,
    /// Every page-table page, freed at the end.
    pages: Vec<u64>,
}

impl PageTables {
    /// Empty tables.
    pub fn new(ram: &GuestRam) -> Result<PageTables, LwkError> {
        let root = ram.alloc_pt_page().ok_or(LwkError::OutOfMemory)?;
        Ok(PageTables {
            root,
            pages: vec![root],
        })
    }

    /// The next-level table under `table[index]`, made when missing.
    fn next(&mut self, ram: &GuestRam, table: u64, index: u64) -> Result<u64, LwkError> {
        let entry_at = table + index * 8;
        let entry = ram.read_u64(entry_at);
        if entry & P != 0 {
            if entry & PS != 0 {
                return Err(LwkError::Internal(format!(
                    "page table entry {entry_at:#x} maps a large page where a table was expected"
                )));
            }
            return Ok(entry & ADDR);
        }
        let page = ram.alloc_pt_page().ok_or(LwkError::OutOfMemory)?;
        self.pages.push(page);
        // Upper levels are permissive; the leaf decides.
        ram.write_u64(entry_at, page | P | RW | US);
        Ok(page)
    }

    fn indices(va: u64) -> [u64; 4] {
        [
            (va >> 39) & 511,
            (va >> 30) & 511,
            (va >> 21) & 511,
            (va >> 12) & 511,
        ]
    }

    /// Map the 2 MiB page at `va` to guest-physical `gpa` (both 2 MiB aligned).
    pub fn map_huge(&mut self, ram: &GuestRam, va: u64, gpa: u64) -> Result<(), LwkError> {
        debug_assert!(va.is_multiple_of(HUGE) && gpa.is_multiple_of(HUGE));
        let [l4, l3, l2, _] = Self::indices(va);
        let pdpt = self.next(ram, self.root, l4)?;
        let pd = self.next(ram, pdpt, l3)?;
        ram.write_u64(pd + l2 * 8, gpa | P | RW | US | PS);
        Ok(())
    }

    /// Remove the 2 MiB mapping at `va` (only for memory the app was never
    /// given: no vCPU can hold a translation of it).
    pub fn unmap_huge(&mut self, ram: &GuestRam, va: u64) {
        let [l4, l3, l2, _] = Self::indices(va);
        let e4 = ram.read_u64(self.root + l4 * 8);
        if e4 & P == 0 {
            return;
        }
        let e3 = ram.read_u64((e4 & ADDR) + l3 * 8);
        if e3 & P == 0 {
            return;
        }
        ram.write_u64((e3 & ADDR) + l2 * 8, 0);
    }

    /// Map the 4 KiB page at `va` to `gpa`.
    pub fn map_small(
        &mut self,
        ram: &GuestRam,
        va: u64,
        gpa: u64,
        access: Access,
    ) -> Result<(), LwkError> {
        debug_assert!(va.is_multiple_of(PAGE) && gpa.is_multiple_of(PAGE));
        let [l4, l3, l2, l1] = Self::indices(va);
        let pdpt = self.next(ram, self.root, l4)?;
        let pd = self.next(ram, pdpt, l3)?;
        let pt = self.next(ram, pd, l2)?;
        let user = match access {
            Access::User => US,
            Access::System => 0,
        };
        ram.write_u64(pt + l1 * 8, gpa | P | RW | user);
        Ok(())
    }

    /// Translate `va` as the CPU would: its guest-physical address, if
    /// mapped (the tests check the tables against it).
    #[cfg(test)]
    pub fn translate(&self, ram: &GuestRam, va: u64) -> Option<u64> {
        let [l4, l3, l2, l1] = Self::indices(va);
        let e4 = ram.read_u64(self.root + l4 * 8);
        if e4 & P == 0 {
            return None;
        }
        let e3 = ram.read_u64((e4 & ADDR) + l3 * 8);
        if e3 & P == 0 {
            return None;
        }
        let e2 = ram.read_u64((e3 & ADDR) + l2 * 8);
        if e2 & P == 0 {
            return None;
        }
        if e2 & PS != 0 {
            return Some((e2 & ADDR & !(HUGE - 1)) + (va & (HUGE - 1)));
        }
        let e1 = ram.read_u64((e2 & ADDR) + l1 * 8);
        (e1 & P != 0).then(|| (e1 & ADDR) + (va & (PAGE - 1)))
    }

    /// Give every page-table page back.
    pub fn free(self, ram: &GuestRam) {
        ram.free_pt_pages(self.pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_translates() {
        let ram = GuestRam::new(16 * HUGE, None, &[]).unwrap();
        let mut pt = PageTables::new(&ram).unwrap();
        let chunk = ram.alloc_chunk().unwrap();
        pt.map_huge(&ram, 0x40_0000, chunk).unwrap();
        assert_eq!(pt.translate(&ram, 0x40_1234), Some(chunk + 0x1234));
        assert_eq!(pt.translate(&ram, 0x60_0000), None);
        assert_eq!(pt.translate(&ram, 0), None);
        pt.map_small(&ram, 0x7fff_ffc0_3000, 0x3000, Access::User)
            .unwrap();
        assert_eq!(pt.translate(&ram, 0x7fff_ffc0_3008), Some(0x3008));
        assert_eq!(pt.translate(&ram, 0x7fff_ffc0_4000), None);
        // A large page where a table is needed is an internal error, not a panic.
        pt.map_huge(&ram, 0x7fff_ffe0_0000, chunk).unwrap();
        assert!(pt
            .map_small(&ram, 0x7fff_ffe0_1000, 0, Access::User)
            .is_err());
        pt.free(&ram);
    }
}
