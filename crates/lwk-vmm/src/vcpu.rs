//! A thread of an app: one vCPU, run by one host thread pinned to one of the
//! enclave's cores (as Kitten pins threads), until the thread or its app ends.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use kvm_bindings::kvm_regs;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::app::{AppState, GuestFault, Handling, ThreadInfo};
use crate::calls::{self, Ctx, Outcome};
use crate::layout::{HUGE, SYS_VA};
use crate::proxy::Client;
use crate::stub::mailbox as mb;
use crate::vm::Lwk;
use crate::{cpu, host, ExitKind, LwkError};

/// How a new thread starts.
pub struct ThreadStart {
    /// Its registers.
    pub regs: kvm_regs,
    /// Its FS base (TLS).
    pub fs_base: u64,
    /// Its guest thread id.
    pub tid: u32,
    /// `CLONE_CHILD_CLEARTID`: the word to clear and wake when it ends.
    pub clear_tid: Option<u64>,
}

/// One guest thread for a vCPU worker to run.
pub struct Job {
    lwk: Arc<Lwk>,
    app: Arc<AppState>,
    start: ThreadStart,
    tables: cpu::SystemTables,
    cpu: u32,
    core: u32,
    /// The worker's own job queue, handed back to the pool with the worker
    /// when the job ends (while idle, only the pool holds it, so dropping the
    /// LWK ends the worker).
    queue: mpsc::Sender<Job>,
}

/// An idle vCPU worker: a host thread that owns one vCPU and runs guest
/// threads on it one after another. Reusing it saves a thread's creation
/// and teardown per app (a clone, a stack mapped and unmapped, TLB
/// shootdowns that reach the enclave's core).
pub struct Worker {
    /// Its vCPU's slot.
    pub slot: usize,
    queue: mpsc::Sender<Job>,
}

/// Start a thread of `app` on a vCPU of its own.
pub fn spawn(lwk: Arc<Lwk>, app: Arc<AppState>, start: ThreadStart) -> Result<(), LwkError> {
    let (slot, vcpu) = match lwk.idle_worker() {
        Some(w) => (w.slot, Ok(w.queue)),
        None => {
            let (slot, fd) = lwk.new_vcpu()?;
            (slot, Err(fd))
        }
    };
    let give_back = |vcpu: Result<mpsc::Sender<Job>, VcpuFd>| match vcpu {
        Ok(queue) => lwk.worker_idle(Worker { slot, queue }),
        Err(fd) => lwk.vcpu_unused(slot, fd),
    };
    let tables = {
        let mut c = app.core.lock().unwrap();
        let mapped = match c.space.as_mut() {
            Some(space) => lwk.map_vcpu_pages(space, slot),
            None => Err(LwkError::NoApp("the app has ended".into())),
        };
        match mapped {
            Ok(t) => {
                c.threads.insert(start.tid, ThreadInfo { host_tid: 0 });
                if let Some(a) = start.clear_tid {
                    c.clear_tid.insert(start.tid, a);
                }
                t
            }
            Err(e) => {
                drop(c);
                give_back(vcpu);
                return Err(e);
            }
        }
    };
    let index = (start.tid - app.pid) as usize;
    let cpu = (index % lwk.cores().len()) as u32;
    let core = lwk.cores()[cpu as usize];
    let tid = start.tid;
    let unregister = |app: &AppState| {
        let mut c = app.core.lock().unwrap();
        c.threads.remove(&tid);
        c.clear_tid.remove(&tid);
    };
    match vcpu {
        Ok(queue) => {
            let job = Job {
                lwk: lwk.clone(),
                app: app.clone(),
                start,
                tables,
                cpu,
                core,
                queue: queue.clone(),
            };
            if queue.send(job).is_err() {
                unregister(&app);
                return Err(LwkError::Internal("a vCPU worker is gone".into()));
            }
        }
        Err(fd) => {
            let (queue, jobs) = mpsc::channel();
            let job = Job {
                lwk: lwk.clone(),
                app: app.clone(),
                start,
                tables,
                cpu,
                core,
                queue,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("lwk-vcpu-{slot}"))
                .spawn(move || worker(slot, fd, job, jobs));
            if let Err(e) = spawned {
                unregister(&app);
                return Err(LwkError::Internal(format!(
                    "cannot start a vCPU thread: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// A vCPU worker's life: run its first job, go idle, run the next job it is
/// given, until its LWK goes away (its queue closes).
fn worker(slot: usize, mut fd: VcpuFd, first: Job, jobs: mpsc::Receiver<Job>) {
    let mut job = first;
    loop {
        let Job {
            lwk,
            app,
            start,
            tables,
            cpu,
            core,
            queue,
        } = job;
        run(&lwk, &app, slot, &mut fd, tables, start, cpu, core);
        // Idle before the app's end is published, so a launch that follows
        // at once finds this worker.
        lwk.worker_idle(Worker { slot, queue });
        lwk.finish_if_done(&app);
        drop(app);
        drop(lwk);
        match jobs.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

/// Why a thread stopped running guest code.
enum Stop {
    /// It called `exit`.
    Exit(i32),
    /// Its app is ending.
    AppEnds,
}

#[allow(clippy::too_many_arguments)]
fn run(
    lwk: &Arc<Lwk>,
    app: &Arc<AppState>,
    slot: usize,
    fd: &mut VcpuFd,
    tables: cpu::SystemTables,
    start: ThreadStart,
    cpu: u32,
    core: u32,
) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core as usize);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        // The thread still runs, but not where Kitten would pin it: say so.
        tracing::warn!(
            pid = app.pid,
            core,
            "cannot pin a vCPU thread to its core: {e}"
        );
    }
    if let Some(t) = app.core.lock().unwrap().threads.get_mut(&start.tid) {
        t.host_tid = host::gettid();
    }
    let tid = start.tid;
    let mailbox = lwk.mailbox(slot);
    let stop = match prepare(lwk, app, fd, &tables, &start) {
        Ok(()) => {
            lwk.proxy.add(Client {
                mailbox,
                app: app.clone(),
                tid,
                cpu,
            });
            let s = guest_loop(lwk, app, fd, slot, tid, cpu);
            lwk.proxy.remove(&mailbox);
            s
        }
        Err(e) => {
            tracing::error!(pid = app.pid, tid, "cannot start a vCPU: {e}");
            app.end(ExitKind::Signal(libc::SIGKILL), None);
            Stop::AppEnds
        }
    };
    thread_ended(lwk, app, tid, stop);
}

fn prepare(
    lwk: &Lwk,
    app: &AppState,
    fd: &VcpuFd,
    tables: &cpu::SystemTables,
    start: &ThreadStart,
) -> Result<(), LwkError> {
    let cr3 = app
        .core
        .lock()
        .unwrap()
        .space
        .as_ref()
        .map(|s| s.pt.root)
        .ok_or_else(|| LwkError::NoApp("the app has ended".into()))?;
    cpu::set_sregs(fd, cr3, tables, start.fs_base)?;
    cpu::set_syscall_msrs(fd, tables.stub_va)?;
    cpu::set_fpu(fd, lwk.xcr0(), lwk.xsave_fits())?;
    fd.set_regs(&start.regs).map_err(cpu::kvm("KVM_SET_REGS"))
}

fn guest_loop(
    lwk: &Lwk,
    app: &Arc<AppState>,
    fd: &mut VcpuFd,
    slot: usize,
    tid: u32,
    cpu: u32,
) -> Stop {
    let doorbell = lwk.doorbell_gpa();
    loop {
        if app.exiting.load(Ordering::SeqCst) {
            return Stop::AppEnds;
        }
        let exit = match fd.run() {
            Ok(VcpuExit::MmioWrite(addr, _)) if (doorbell..doorbell + HUGE).contains(&addr) => None,
            Ok(VcpuExit::Hlt) => Some(fault_of(lwk, fd)),
            Ok(VcpuExit::Shutdown) => Some(Err("triple fault (the CPU shut down)".to_string())),
            Ok(other) => Some(Err(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => Some(Err(format!("KVM_RUN: {e}"))),
        };
        match exit {
            None => {
                if let Some(stop) = exit_call(lwk, app, fd, slot, tid, cpu) {
                    return stop;
                }
            }
            Some(Ok(fault)) => {
                app.end(ExitKind::Signal(fault.signal()), Some(fault));
                end_app(app);
                return Stop::AppEnds;
            }
            Some(Err(what)) => {
                tracing::error!(pid = app.pid, tid, "vCPU stopped: {what}");
                let regs = fd.get_regs().map(|r| r.rip).unwrap_or(0);
                app.end(
                    ExitKind::Signal(libc::SIGSEGV),
                    Some(GuestFault {
                        vector: 8,
                        error_code: 0,
                        rip: regs,
                        address: None,
                    }),
                );
                end_app(app);
                return Stop::AppEnds;
            }
        }
    }
}

/// A vCPU halted in an exception handler: which exception, where.
fn fault_of(lwk: &Lwk, fd: &VcpuFd) -> Result<GuestFault, String> {
    let regs = fd.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    let vector = cpu::vector_of_halt(regs.rip)
        .ok_or_else(|| format!("halted outside the exception handlers at {:#x}", regs.rip))?;
    // The handler pushed the vector over the CPU's frame: [vector, error
    // code, rip, cs, rflags, rsp, ss] on the exception stack, which is in
    // the system area (guest-physical = virtual - SYS_VA).
    let frame = regs.rsp.checked_sub(SYS_VA).ok_or("bad exception stack")?;
    let read = |i: u64| -> u64 { lwk.ram.read_u64(frame + 8 * i) };
    let error_code = read(1);
    let rip = read(2);
    let address = if vector == 14 {
        Some(
            fd.get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?
                .cr2,
        )
    } else {
        None
    };
    Ok(GuestFault {
        vector,
        error_code,
        rip,
        address,
    })
}

/// Serve a call that came through the doorbell; `Some` when the thread stops.
fn exit_call(
    lwk: &Lwk,
    app: &Arc<AppState>,
    fd: &mut VcpuFd,
    slot: usize,
    tid: u32,
    cpu: u32,
) -> Option<Stop> {
    let mbx = lwk.mailbox(slot);
    let (nr, a) = mbx.call();
    app.exit_calls.fetch_add(1, Ordering::Relaxed);
    let ctx = Ctx {
        ram: &lwk.ram,
        cores: lwk.cores(),
        app,
        tid,
        cpu,
        on_vcpu: true,
    };
    let outcome = match nr {
        56 => Outcome::Ret(clone(lwk, app, fd, &mbx, a)),
        158 => Outcome::Ret(arch_prctl(lwk, app, fd, a)),
        _ => calls::dispatch(&ctx, nr, a),
    };
    // Calls are coming: let the proxy take the next ones.
    lwk.proxy.nudge();
    match outcome {
        Outcome::Ret(v) => {
            mbx.set_ret(v);
            mbx.set_state(mb::STATE_IDLE);
            None
        }
        Outcome::Bounce => {
            mbx.set_ret(-(libc::ENOSYS as i64));
            mbx.set_state(mb::STATE_IDLE);
            None
        }
        Outcome::ExitThread(code) => Some(Stop::Exit(code)),
        Outcome::ExitGroup(code) => {
            app.end(ExitKind::Code(code), None);
            end_app(app);
            Some(Stop::AppEnds)
        }
        Outcome::Signal(sig) => {
            app.end(ExitKind::Signal(sig), None);
            end_app(app);
            Some(Stop::AppEnds)
        }
    }
}

/// `clone` of a thread (`CLONE_VM | CLONE_THREAD`): a new vCPU. Processes
/// (`fork`, `vfork`, `posix_spawn`) are not supported in an LWK.
fn clone(
    lwk: &Lwk,
    app: &Arc<AppState>,
    fd: &VcpuFd,
    mbx: &crate::mailbox::Mailbox,
    a: [u64; 6],
) -> i64 {
    let (flags, newsp, ptid, ctid, tls) = (a[0], a[1], a[2], a[3], a[4]);
    let need = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    if flags & need != need {
        app.count(Handling::Unsupported, 56);
        return -(libc::ENOSYS as i64);
    }
    app.count(Handling::Served, 56);
    let (Ok(regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else {
        return -(libc::EAGAIN as i64);
    };
    let rip = mbx.user_rip();
    let rflags = mbx.user_rflags() | 0x2;
    let child = kvm_regs {
        rax: 0,
        rcx: rip,
        r11: rflags,
        rip,
        rflags,
        rsp: if newsp != 0 { newsp } else { regs.rsp },
        ..regs
    };
    let fs_base = if flags & libc::CLONE_SETTLS as u64 != 0 {
        tls
    } else {
        sregs.fs.base
    };
    let tid = {
        let mut c = app.core.lock().unwrap();
        let t = c.next_tid;
        c.next_tid += 1;
        t
    };
    let ram = &lwk.ram;
    let write_tid = |addr: u64| {
        app.core
            .lock()
            .unwrap()
            .space
            .as_ref()
            .map_or(Err(-(libc::EFAULT as i64)), |s| s.write_u32(ram, addr, tid))
    };
    if flags & libc::CLONE_PARENT_SETTID as u64 != 0 && write_tid(ptid).is_err() {
        return -(libc::EFAULT as i64);
    }
    if flags & libc::CLONE_CHILD_SETTID as u64 != 0 && write_tid(ctid).is_err() {
        return -(libc::EFAULT as i64);
    }
    let clear_tid = (flags & libc::CLONE_CHILD_CLEARTID as u64 != 0).then_some(ctid);
    let Some(lwk_arc) = lwk.self_arc() else {
        return -(libc::EAGAIN as i64);
    };
    match spawn(
        lwk_arc,
        app.clone(),
        ThreadStart {
            regs: child,
            fs_base,
            tid,
            clear_tid,
        },
    ) {
        Ok(()) => tid as i64,
        Err(e) => {
            tracing::warn!(pid = app.pid, "clone: {e}");
            -(libc::EAGAIN as i64)
        }
    }
}

fn arch_prctl(lwk: &Lwk, app: &AppState, fd: &VcpuFd, a: [u64; 6]) -> i64 {
    const SET_GS: u64 = 0x1001;
    const SET_FS: u64 = 0x1002;
    const GET_FS: u64 = 0x1003;
    const GET_GS: u64 = 0x1004;
    let Ok(mut s) = fd.get_sregs() else {
        return -(libc::EFAULT as i64);
    };
    let r = match a[0] {
        SET_FS | SET_GS => {
            if a[0] == SET_FS {
                s.fs.base = a[1];
            } else {
                s.gs.base = a[1];
            }
            if fd.set_sregs(&s).is_ok() {
                0
            } else {
                -(libc::EFAULT as i64)
            }
        }
        GET_FS | GET_GS => {
            let v = if a[0] == GET_FS { s.fs.base } else { s.gs.base };
            let c = app.core.lock().unwrap();
            match c.space.as_ref() {
                Some(space) => match space.write(&lwk.ram, a[1], &v.to_le_bytes()) {
                    Ok(()) => 0,
                    Err(e) => e,
                },
                None => -(libc::EFAULT as i64),
            }
        }
        _ => -(libc::EINVAL as i64),
    };
    app.count(Handling::Served, 158);
    r
}

/// The app is ending: kick every other thread of it out of the guest and
/// out of blocking calls, until each has stopped. A kick can land just
/// before a thread enters `KVM_RUN` or a blocking call and be lost, so it
/// is repeated until the thread is gone. Runs on the calling thread: a vCPU
/// thread ending its app (on the enclave's core, which it owns anyway), or a
/// thread of the monitor (on the host's cores).
pub fn end_app(app: &AppState) {
    let me = host::gettid();
    let mut c = app.core.lock().unwrap();
    loop {
        let others: Vec<i32> = c
            .threads
            .values()
            .map(|t| t.host_tid)
            .filter(|t| *t != me)
            .collect();
        if others.is_empty() {
            return;
        }
        for t in others.iter().filter(|t| **t != 0) {
            host::kick(*t);
        }
        c = app
            .threads_cv
            .wait_timeout(c, Duration::from_millis(2))
            .unwrap()
            .0;
    }
}

/// A thread stopped: release its tid word (`CLONE_CHILD_CLEARTID`), and
/// when it was the app's last thread, the app's exit is its exit code.
fn thread_ended(lwk: &Lwk, app: &AppState, tid: u32, stop: Stop) {
    let mut c = app.core.lock().unwrap();
    if let Stop::Exit(code) = stop {
        if c.threads.len() <= 1 && c.ending.is_none() {
            c.ending = Some((ExitKind::Code(code), None));
            app.exiting.store(true, Ordering::SeqCst);
        }
    }
    if let (Some(addr), Some(space)) = (c.clear_tid.remove(&tid), c.space.as_ref()) {
        if space.write_u32(&lwk.ram, addr, 0).is_ok() {
            if let Ok(h) = space.host_u32(&lwk.ram, addr) {
                // Shared, as Linux wakes it (pthread_join waits shared).
                host::futex(h, libc::FUTEX_WAKE, 1, None, 0, 0, 0);
            }
        }
    }
    c.threads.remove(&tid);
    app.threads_cv.notify_all();
}
