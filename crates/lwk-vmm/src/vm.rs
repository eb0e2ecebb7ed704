//! The LWK: one KVM VM per enclave, its vCPUs, and launching apps in it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::app::{AppExit, AppState};
use crate::layout::{
    align_down, align_up, VcpuPages, DOORBELL_VA, HANDLERS_OFF, HUGE, IDT_OFF, LOWEST_USER,
    MAX_VCPUS, MMAP_BOTTOM, PAGE, PIE_BASE, SYS_VA,
};
use crate::paging::Access;
use crate::proxy::Proxy;
use crate::ram::GuestRam;
use crate::space::AddressSpace;
use crate::{cpu, elf, initstack, stub, vcpu, ExitKind, LaunchRequest, LwkConfig, LwkError};

/// Why a launch was refused.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The program.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// It is not a program an LWK runs.
    #[error("{path}: {error}")]
    Program {
        /// The program.
        path: PathBuf,
        /// Why.
        error: elf::ElfError,
    },
    /// It does not fit.
    #[error("{0}")]
    TooBig(String),
    /// Its arguments and environment are unusable.
    #[error("{0}")]
    Arguments(String),
    /// The LWK failed.
    #[error(transparent)]
    Lwk(#[from] LwkError),
}

/// Guest-physical address of the doorbell: just past the RAM, 1 GiB aligned.
fn doorbell_gpa(mem: u64) -> u64 {
    align_up(mem, 1 << 30) + (1 << 30)
}

/// One enclave's lightweight kernel.
pub struct Lwk {
    pub(crate) ram: GuestRam,
    vm: VmFd,
    _kvm: Kvm,
    cpuid: CpuId,
    xcr0: u64,
    /// A vCPU's extended state fits `kvm_xsave` (4 KiB: no AMX), so it can
    /// be reset between apps with KVM_SET_XSAVE.
    xsave_fits: bool,
    cores: Vec<u32>,
    doorbell_gpa: u64,
    /// Idle vCPU workers (KVM cannot destroy one vCPU, so vCPUs, and the
    /// host threads that run them, are reused).
    idle_workers: Mutex<Vec<vcpu::Worker>>,
    /// vCPUs made but with no worker (a spawn that failed after making one).
    spare_vcpus: Mutex<Vec<(usize, VcpuFd)>>,
    /// How many vCPUs exist.
    vcpus_made: Mutex<usize>,
    apps: Mutex<BTreeMap<u32, Arc<AppState>>>,
    next_pid: AtomicU32,
    pub(crate) proxy: Arc<Proxy>,
    /// Held while a launch checks whether apps run and flushes.
    launching: Mutex<()>,
    /// Set when an app ended and its memory waits to be zeroed by the
    /// scrubber thread (and when the LWK goes away, to end that thread).
    scrub_needed: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// Ourselves, for threads that must hold the LWK (a new vCPU thread).
    me: std::sync::Weak<Lwk>,
    closed: AtomicBool,
}

impl Lwk {
    /// Make an enclave's LWK: its VM and fully populated guest RAM.
    pub fn new(cfg: LwkConfig) -> Result<Arc<Lwk>, LwkError> {
        if cfg.cores.is_empty() {
            return Err(LwkError::Config("an LWK needs at least one core".into()));
        }
        let kvm = Kvm::new().map_err(|e| LwkError::Kvm(format!("cannot open /dev/kvm: {e}")))?;
        let vm = kvm.create_vm().map_err(cpu::kvm("KVM_CREATE_VM"))?;
        let size = align_down(cfg.mem_bytes, HUGE);
        let ram = GuestRam::new(size, cfg.memory_dir.as_deref(), &cfg.numa_nodes)?;
        set_ram_slot(&vm, &ram, size)?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(cpu::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let xcr0 = supported_xcr0(&cpuid);
        // KVM_CAP_XSAVE2 is the size KVM_SET_XSAVE reads (0: the old 4 KiB).
        let xsave_size = kvm.check_extension_int(kvm_ioctls::Cap::Xsave2);
        let xsave_fits = xsave_size <= std::mem::size_of::<kvm_bindings::kvm_xsave>() as i32;
        // The system area: IDT and exception handlers, shared by every app.
        let mem = ram.mem();
        use vm_memory::{Bytes, GuestAddress};
        mem.write_slice(&cpu::idt_page(), GuestAddress(IDT_OFF))
            .and_then(|()| mem.write_slice(&cpu::handlers_page(), GuestAddress(HANDLERS_OFF)))
            .map_err(|e| LwkError::Memory(e.to_string()))?;
        crate::host::install_kick_handler();
        let proxy = Proxy::new(!cfg.proxy_cores.is_empty());
        let lwk = Arc::new_cyclic(|me| Lwk {
            me: me.clone(),
            doorbell_gpa: doorbell_gpa(size),
            ram,
            vm,
            _kvm: kvm,
            cpuid,
            xcr0,
            xsave_fits,
            cores: cfg.cores.clone(),
            idle_workers: Mutex::new(Vec::new()),
            spare_vcpus: Mutex::new(Vec::new()),
            vcpus_made: Mutex::new(0),
            apps: Mutex::new(BTreeMap::new()),
            next_pid: AtomicU32::new(1),
            proxy,
            launching: Mutex::new(()),
            scrub_needed: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
            closed: AtomicBool::new(false),
        });
        lwk.proxy
            .start(Arc::downgrade(&lwk), cfg.proxy_cores.clone())
            .map_err(|e| LwkError::Internal(format!("cannot start the proxy thread: {e}")))?;
        let weak = Arc::downgrade(&lwk);
        let cores = cfg.proxy_cores.clone();
        let wake = lwk.scrub_needed.clone();
        std::thread::Builder::new()
            .name("lwk-scrubber".into())
            .spawn(move || scrubber(weak, wake, cores))
            .map_err(|e| LwkError::Internal(format!("cannot start the scrubber thread: {e}")))?;
        Ok(lwk)
    }

    /// This LWK as an Arc (None while it is being dropped).
    pub(crate) fn self_arc(&self) -> Option<Arc<Lwk>> {
        self.me.upgrade()
    }

    /// Guest-physical address of the doorbell.
    pub(crate) fn doorbell_gpa(&self) -> u64 {
        self.doorbell_gpa
    }

    /// The enclave's cores.
    pub fn cores(&self) -> &[u32] {
        &self.cores
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.ram.size()
    }

    /// Guest RAM not held by any app.
    pub fn free_bytes(&self) -> u64 {
        self.ram.free_bytes()
    }

    /// Is KVM usable here (for tests and `hobbes status`)?
    pub fn available() -> Result<(), String> {
        Kvm::new()
            .map(drop)
            .map_err(|e| format!("cannot open /dev/kvm: {e}"))
    }

    /// An idle vCPU worker, if there is one.
    pub(crate) fn idle_worker(&self) -> Option<vcpu::Worker> {
        self.idle_workers.lock().unwrap().pop()
    }

    /// A worker finished its guest thread and waits for the next.
    pub(crate) fn worker_idle(&self, w: vcpu::Worker) {
        self.idle_workers.lock().unwrap().push(w);
    }

    /// A vCPU for a new worker: a spare one, or a new one.
    pub(crate) fn new_vcpu(&self) -> Result<(usize, VcpuFd), LwkError> {
        if let Some(v) = self.spare_vcpus.lock().unwrap().pop() {
            return Ok(v);
        }
        let mut made = self.vcpus_made.lock().unwrap();
        if *made >= MAX_VCPUS {
            return Err(LwkError::Config(format!(
                "an LWK runs at most {MAX_VCPUS} threads at once"
            )));
        }
        let slot = *made;
        let fd = self
            .vm
            .create_vcpu(slot as u64)
            .map_err(cpu::kvm("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&self.cpuid)
            .map_err(cpu::kvm("KVM_SET_CPUID2"))?;
        *made += 1;
        Ok((slot, fd))
    }

    /// A vCPU made for a worker that could not start.
    pub(crate) fn vcpu_unused(&self, slot: usize, fd: VcpuFd) {
        self.spare_vcpus.lock().unwrap().push((slot, fd));
    }

    /// XCR0 for the guest.
    pub(crate) fn xcr0(&self) -> u64 {
        self.xcr0
    }

    /// Can a vCPU's extended state be reset with KVM_SET_XSAVE?
    pub(crate) fn xsave_fits(&self) -> bool {
        self.xsave_fits
    }

    /// Prepare vCPU `slot`'s system pages and map them into `space`.
    pub(crate) fn map_vcpu_pages(
        &self,
        space: &mut AddressSpace,
        slot: usize,
    ) -> Result<cpu::SystemTables, LwkError> {
        use vm_memory::{Bytes, GuestAddress};
        let p = VcpuPages::of(slot);
        let gdt_va = SYS_VA + p.gdt;
        let mem = self.ram.mem();
        mem.write_slice(
            &cpu::gdt_page(gdt_va, SYS_VA + p.exc_stack + PAGE),
            GuestAddress(p.gdt),
        )
        .and_then(|()| {
            mem.write_slice(
                &stub::page(DOORBELL_VA, SPIN, crate::calls::EXIT_CALLS),
                GuestAddress(p.stub),
            )
        })
        .map_err(|e| LwkError::Memory(e.to_string()))?;
        space
            .pt
            .map_small(&self.ram, gdt_va, p.gdt, Access::System)?;
        space
            .pt
            .map_small(&self.ram, SYS_VA + p.exc_stack, p.exc_stack, Access::System)?;
        space
            .pt
            .map_small(&self.ram, SYS_VA + p.stub, p.stub, Access::User)?;
        Ok(cpu::SystemTables {
            gdt_va,
            stub_va: SYS_VA + p.stub,
        })
    }

    /// The host address of vCPU `slot`'s stub page (its mailbox).
    pub(crate) fn mailbox(&self, slot: usize) -> crate::mailbox::Mailbox {
        crate::mailbox::Mailbox::at(self.ram.host_addr(VcpuPages::of(slot).stub))
    }

    /// When fresh page-table pages run low and no app runs, drop every shadow
    /// page KVM keeps (by deleting and re-adding the RAM's memory slot), so
    /// ended apps' page-table pages can be reused (see
    /// `GuestRam::free_pt_pages`). It costs about 3 ms here, so it is done
    /// only when a chunk's worth of pages (about 40 apps) is used up;
    /// otherwise, and whenever apps run, new apps take fresh pages.
    fn recycle_page_tables(&self) -> Result<(), LwkError> {
        if self.ram.fresh_pt_pages() >= RECYCLE_BELOW
            || !self.apps.lock().unwrap().is_empty()
            || !self.ram.has_retired_pt_pages()
        {
            return Ok(());
        }
        set_ram_slot(&self.vm, &self.ram, 0)?;
        set_ram_slot(&self.vm, &self.ram, self.ram.size())?;
        self.ram.recycle_pt_pages();
        Ok(())
    }

    /// Start an app.
    pub fn launch(self: &Arc<Self>, req: LaunchRequest) -> Result<App, LaunchError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LwkError::Config("the LWK is shutting down".into()).into());
        }
        let _one_launch_at_a_time = self.launching.lock().unwrap();
        self.recycle_page_tables()?;
        let path = if req.program.is_absolute() {
            req.program.clone()
        } else {
            req.cwd.join(&req.program)
        };
        let file = read_as(&path, req.uid, req.gid).map_err(|error| LaunchError::Read {
            path: path.clone(),
            error,
        })?;
        let program = elf::parse(&file).map_err(|error| LaunchError::Program {
            path: path.clone(),
            error,
        })?;
        let bias = match program.kind {
            elf::ProgramKind::Exec => 0,
            elf::ProgramKind::StaticPie => PIE_BASE - align_down(program.lo, HUGE),
        };
        let lo = program.lo + bias;
        let hi = program.hi + bias;
        if lo < LOWEST_USER || hi > MMAP_BOTTOM {
            return Err(LaunchError::TooBig(format!(
                "{}: linked at {lo:#x}-{hi:#x}; an LWK app must lie between {LOWEST_USER:#x} and {MMAP_BOTTOM:#x}",
                path.display()
            )));
        }
        let va_lo = align_down(lo, HUGE);
        let chunks = ((align_up(hi, HUGE) - va_lo) / HUGE) as usize;
        let need = chunks as u64 * HUGE + crate::layout::STACK_SIZE;
        if need > self.ram.free_bytes() {
            return Err(LaunchError::TooBig(format!(
                "{}: its image and stack need {} MiB; the enclave has {} MiB free of {} MiB",
                path.display(),
                need >> 20,
                self.ram.free_bytes() >> 20,
                self.ram.size() >> 20
            )));
        }
        let gpa = self.ram.alloc_contiguous(chunks).ok_or_else(|| {
            LaunchError::TooBig(format!(
                "{}: no {} MiB of contiguous memory left in the enclave",
                path.display(),
                chunks as u64 * 2
            ))
        })?;
        let mut space = match AddressSpace::new(&self.ram) {
            Ok(s) => s,
            Err(e) => {
                for i in 0..chunks as u64 {
                    self.ram.free_chunk(gpa + i * HUGE);
                }
                return Err(e.into());
            }
        };
        let built = self.build_space(
            &mut space, &program, &file, &req, &path, bias, va_lo, gpa, chunks,
        );
        let (entry, rsp) = match built {
            Ok(v) => v,
            Err(e) => {
                space.free(&self.ram);
                return Err(e);
            }
        };
        let cwd_fd = match rustix::fs::open(
            &req.cwd,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                space.free(&self.ram);
                return Err(LaunchError::Read {
                    path: req.cwd.clone(),
                    error: e.into(),
                });
            }
        };
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        let app = Arc::new(AppState::new(
            pid,
            path,
            req.uid,
            req.gid,
            space,
            [req.stdin, req.stdout, req.stderr],
            (cwd_fd, req.cwd.clone()),
        ));
        self.apps.lock().unwrap().insert(pid, app.clone());
        let start = vcpu::ThreadStart {
            regs: cpu::user_regs(entry, rsp),
            fs_base: 0,
            tid: pid,
            clear_tid: None,
        };
        if let Err(e) = vcpu::spawn(self.clone(), app.clone(), start) {
            app.end(ExitKind::Signal(libc::SIGKILL), None);
            self.finish_if_done(&app);
            return Err(e.into());
        }
        Ok(App {
            _lwk: self.clone(),
            state: app,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build_space(
        &self,
        space: &mut AddressSpace,
        program: &elf::Program,
        file: &[u8],
        req: &LaunchRequest,
        path: &std::path::Path,
        bias: u64,
        va_lo: u64,
        gpa: u64,
        chunks: usize,
    ) -> Result<(u64, u64), LaunchError> {
        use vm_memory::{Bytes, GuestAddress};
        let mut image = vec![0u8; program.image_bytes() as usize];
        program
            .load(file, &mut image)
            .map_err(|error| LaunchError::Program {
                path: path.to_path_buf(),
                error,
            })?;
        let lo = program.lo + bias;
        self.ram
            .mem()
            .write_slice(&image, GuestAddress(gpa + (lo - va_lo)))
            .map_err(|e| LwkError::Memory(e.to_string()))?;
        drop(image);
        space.map_image(&self.ram, va_lo, gpa, chunks, program.hi + bias)?;
        let top = space.map_stack(&self.ram)?;
        space
            .pt
            .map_small(&self.ram, SYS_VA + IDT_OFF, IDT_OFF, Access::System)?;
        space.pt.map_small(
            &self.ram,
            SYS_VA + HANDLERS_OFF,
            HANDLERS_OFF,
            Access::System,
        )?;
        space
            .pt
            .map_huge(&self.ram, DOORBELL_VA, self.doorbell_gpa)?;
        let mut random = [0u8; 16];
        let _ = rustix::rand::getrandom(&mut random[..], rustix::rand::GetRandomFlags::empty());
        let env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let execfn = path.to_string_lossy().into_owned();
        let inputs = initstack::StackInputs {
            argv: &req.argv,
            envp: &env,
            execfn: &execfn,
            auxv: initstack::Auxv {
                phdr: program.phdr_vaddr + bias,
                phent: program.phentsize as u64,
                phnum: program.phnum as u64,
                pagesz: PAGE,
                base: 0,
                flags: 0,
                entry: program.entry + bias,
                uid: req.uid,
                euid: req.uid,
                gid: req.gid,
                egid: req.gid,
                secure: false,
                hwcap: self.hwcap(),
                // HWCAP2_FSGSBASE: CR4.FSGSBASE is on, as the stub needs.
                hwcap2: 2,
                clktck: 100,
                random,
                platform: "x86_64",
                minsigstksz: None,
            },
        };
        let stack =
            initstack::build(top, &inputs).map_err(|e| LaunchError::Arguments(e.to_string()))?;
        space
            .write(&self.ram, top - stack.bytes.len() as u64, &stack.bytes)
            .map_err(|_| LwkError::Internal("initial stack outside the stack".into()))?;
        Ok((program.entry + bias, stack.rsp))
    }

    fn hwcap(&self) -> u64 {
        self.cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .map_or(0, |e| e.edx as u64)
    }

    /// After a thread stopped: when it was the app's last, free the app and
    /// publish its exit.
    pub(crate) fn finish_if_done(&self, app: &Arc<AppState>) {
        let mut c = app.core.lock().unwrap();
        if !c.threads.is_empty() {
            return;
        }
        let Some((kind, fault)) = c.ending.clone() else {
            return;
        };
        if let Some(space) = c.space.take() {
            space.free(&self.ram);
        }
        c.fds.clear();
        let calls = app.summary(&c);
        drop(c);
        self.apps.lock().unwrap().remove(&app.pid);
        *app.done.lock().unwrap() = Some(AppExit { kind, fault, calls });
        app.done_cv.notify_all();
        // Zero what the app used now, on the host's cores (not the
        // enclave's, where the next app may already run), so the next launch
        // gets clean memory without zeroing it first.
        let (lock, cv) = &*self.scrub_needed;
        *lock.lock().unwrap() = true;
        cv.notify_one();
    }

    /// Zero freed memory now (call when idle, e.g. after an app ended).
    pub fn scrub(&self) -> usize {
        self.ram.scrub()
    }
}

impl Drop for Lwk {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.proxy.stop();
        let (lock, cv) = &*self.scrub_needed;
        *lock.lock().unwrap() = true;
        cv.notify_one();
    }
}

/// The scrubber thread: zero ended apps' memory on the host's `cores`
/// (where the LWK's service threads run) until the LWK goes away. It holds
/// the LWK only while it scrubs, so the LWK can be dropped while it waits.
fn scrubber(
    lwk: std::sync::Weak<Lwk>,
    wake: Arc<(Mutex<bool>, std::sync::Condvar)>,
    cores: Vec<u32>,
) {
    if !cores.is_empty() {
        let mut set = rustix::thread::CpuSet::new();
        for c in &cores {
            set.set(*c as usize);
        }
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    // Zeroing takes a millisecond or more: it must not delay the monitor's
    // other threads on these cores (an app's waiter, the agent, the proxy).
    crate::host::make_idle_priority();
    loop {
        {
            let (lock, cv) = &*wake;
            let mut needed = lock.lock().unwrap();
            while !*needed {
                needed = cv.wait(needed).unwrap();
            }
            *needed = false;
        }
        let Some(l) = lwk.upgrade() else { return };
        if l.closed.load(Ordering::SeqCst) {
            return;
        }
        l.ram.scrub();
    }
}

/// Give KVM guest RAM as memory slot 0 (`size` 0 deletes the slot).
fn set_ram_slot(vm: &VmFd, ram: &GuestRam, size: u64) -> Result<(), LwkError> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: ram.host_addr(0) as u64,
        flags: 0,
    };
    // SAFETY: the region is guest RAM's mapping, which lives in `ram` as long
    // as the Lwk (and so the VM) does; slot 0 is only ever this region.
    unsafe { vm.set_user_memory_region(region) }.map_err(cpu::kvm("KVM_SET_USER_MEMORY_REGION"))
}

/// Recycle retired page-table pages when fewer fresh ones are left (an app
/// takes about a dozen).
const RECYCLE_BELOW: usize = 64;

/// `pause` iterations a stub waits for the proxy before it exits instead.
const SPIN: u64 = 20_000;

fn supported_xcr0(cpuid: &CpuId) -> u64 {
    // x87, SSE, AVX, and the AVX-512 state when the CPU has it.
    let mask = 0b1110_0111u64;
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(3, |e| ((e.eax as u64) | ((e.edx as u64) << 32)) & mask)
        | 3
}

/// Read the program as the launching user would (permissions checked with
/// the app's credentials, not root's): this thread's file-system ids are
/// the app's while it reads, and its own again after.
fn read_as(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<Vec<u8>> {
    let (old_uid, old_gid) = crate::host::set_fs_ids(uid, gid);
    let read = (|| {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        std::fs::read(path)
    })();
    crate::host::set_fs_ids(old_uid, old_gid);
    read
}

/// A running (or ended) app.
#[derive(Clone)]
pub struct App {
    /// The LWK the app runs in lives at least as long as a handle to it.
    _lwk: Arc<Lwk>,
    state: Arc<AppState>,
}

impl App {
    /// Its pid in the enclave.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// Deliver a signal: terminating signals end the app by their default
    /// action; ignored-by-default ones do nothing; stop signals are refused.
    pub fn signal(&self, sig: i32) -> Result<(), LwkError> {
        if !(1..=64).contains(&sig) {
            return Err(LwkError::Config(format!("{sig} is not a signal")));
        }
        if matches!(
            sig,
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
        ) {
            return Err(LwkError::Config(
                "an LWK app cannot be stopped (only ended)".into(),
            ));
        }
        if self.state.done.lock().unwrap().is_some() {
            return Err(LwkError::NoApp(format!("app {} has ended", self.state.pid)));
        }
        if matches!(
            sig,
            libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT
        ) {
            return Ok(());
        }
        self.state.end(ExitKind::Signal(sig), None);
        let app = self.state.clone();
        std::thread::Builder::new()
            .name("lwk-signal".into())
            .spawn(move || vcpu::end_app(&app))
            .map_err(|e| LwkError::Internal(format!("cannot stop the app's threads: {e}")))?;
        Ok(())
    }

    /// Wait for the app to end.
    pub fn wait(&self) -> AppExit {
        let mut d = self.state.done.lock().unwrap();
        loop {
            if let Some(e) = d.as_ref() {
                return e.clone();
            }
            d = self.state.done_cv.wait(d).unwrap();
        }
    }

    /// Its exit, if it ended.
    pub fn try_wait(&self) -> Option<AppExit> {
        self.state.done.lock().unwrap().clone()
    }
}
