//! The system-call proxy: one host thread per LWK, on the host's cores, that
//! polls the mailboxes of every running vCPU and performs posted calls
//! (it answers within about a microsecond: a call costs about the trap, 31 µs
//! on this node, against about 120 µs through an exit).
//!
//! It spins only while calls keep coming: after [`IDLE`] without one it tells
//! every stub it sleeps (they then take the exit path) and waits until a vCPU
//! thread, having served a call through an exit, wakes it. So a computing
//! app costs the host nothing, and a chatty one gets the fast path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::calls::{self, Ctx, Outcome};
use crate::mailbox::Mailbox;
use crate::stub::mailbox as mb;
use crate::vm::Lwk;

/// How long after a call the proxy polls without yielding its core: about
/// three times the `syscall` trap on this node (30 µs), so back-to-back
/// calls always find it polling.
pub const HOT: Duration = Duration::from_micros(100);

/// How long the proxy polls without a call before it sleeps.
pub const IDLE: Duration = Duration::from_millis(2);

/// A running vCPU the proxy serves.
#[derive(Clone)]
pub struct Client {
    /// Its mailbox.
    pub mailbox: Mailbox,
    /// Its app.
    pub app: Arc<AppState>,
    /// Its guest thread id.
    pub tid: u32,
    /// Its core's index among the enclave's cores.
    pub cpu: u32,
}

/// State shared between the proxy thread and the vCPU threads.
pub struct Proxy {
    clients: Mutex<Vec<Client>>,
    /// Bumped when `clients` changes, so the poll loop re-reads it.
    generation: AtomicU64,
    awake: AtomicBool,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    stop: AtomicBool,
    /// Whether a proxy thread runs at all (no host cores: it does not).
    enabled: bool,
}

impl Proxy {
    /// A proxy (its thread is started by [`Proxy::start`]).
    pub fn new(enabled: bool) -> Arc<Proxy> {
        Arc::new(Proxy {
            clients: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            awake: AtomicBool::new(false),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            enabled,
        })
    }

    /// Start the proxy thread for `lwk`, pinned to `cores`.
    pub fn start(self: &Arc<Self>, lwk: Weak<Lwk>, cores: Vec<u32>) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("lwk-proxy".into())
            .spawn(move || {
                if !cores.is_empty() {
                    let mut set = rustix::thread::CpuSet::new();
                    for c in &cores {
                        set.set(*c as usize);
                    }
                    let _ = rustix::thread::sched_setaffinity(None, &set);
                }
                me.run(lwk);
            })?;
        Ok(())
    }

    /// Stop the thread (the LWK is going away).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.nudge();
    }

    /// Serve a vCPU from now on.
    pub fn add(&self, c: Client) {
        c.mailbox
            .set_proxy_awake(self.enabled && self.awake.load(Ordering::SeqCst));
        self.clients.lock().unwrap().push(c);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stop serving the vCPU with this mailbox.
    pub fn remove(&self, mailbox: &Mailbox) {
        let mut c = self.clients.lock().unwrap();
        c.retain(|x| x.mailbox != *mailbox);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A call went through an exit: wake the proxy if it sleeps, so the
    /// next ones take the fast path.
    pub fn nudge(&self) {
        if !self.enabled {
            return;
        }
        if self.awake.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut w = self.wake.lock().unwrap();
        *w = true;
        self.wake_cv.notify_one();
    }

    fn set_awake(&self, clients: &[Client], awake: bool) {
        self.awake.store(awake, Ordering::SeqCst);
        for c in clients {
            c.mailbox.set_proxy_awake(awake);
        }
    }

    /// The poll loop. Mailboxes are in guest RAM: every access to one is
    /// made while holding the LWK (`l`), which keeps the RAM mapped; the LWK
    /// is let go only while the proxy sleeps.
    fn run(&self, lwk: Weak<Lwk>) {
        let mut seen = u64::MAX;
        let mut clients: Vec<Client> = Vec::new();
        let mut last_call = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(l) = lwk.upgrade() else { return };
            let g = self.generation.load(Ordering::Acquire);
            if g != seen {
                clients = self.clients.lock().unwrap().clone();
                seen = g;
                if !self.awake.load(Ordering::SeqCst) {
                    self.set_awake(&clients, true);
                }
            }
            if self.poll_once(&l, &clients) {
                last_call = Instant::now();
                continue;
            }
            let quiet = last_call.elapsed();
            if quiet < HOT {
                // A call-heavy app posts its next call within a trap's time:
                // poll flat out. No `pause` (spin_loop): on this node, a
                // nested virtual machine, pause loops make the outer
                // hypervisor deschedule the core (pause-loop exiting), and a
                // posted call then waits tens of microseconds for the proxy.
                continue;
            }
            if quiet < IDLE {
                // Still polling, but letting the other threads of this host
                // core run between polls (the monitor's own: an app's waiter,
                // the agent), or they wait until the proxy sleeps (measured:
                // an app's exit reported 2 ms late).
                std::thread::yield_now();
                continue;
            }
            // Going to sleep: tell the stubs first, then look once more for a
            // call posted before they saw it (a stub that still posts one
            // later times out and takes the exit path itself).
            self.set_awake(&clients, false);
            if self.poll_once(&l, &clients) {
                self.set_awake(&clients, true);
                last_call = Instant::now();
                continue;
            }
            // Asleep, the proxy holds neither the LWK nor stale clients.
            drop(l);
            clients.clear();
            seen = u64::MAX;
            let mut w = self.wake.lock().unwrap();
            while !*w && !self.stop.load(Ordering::SeqCst) {
                w = self.wake_cv.wait(w).unwrap();
            }
            *w = false;
            drop(w);
            // Awake again: the next iteration re-reads the clients and tells
            // their stubs (`awake` is still false until then).
            last_call = Instant::now();
        }
    }

    /// Serve every posted call once; did we serve any?
    fn poll_once(&self, lwk: &Lwk, clients: &[Client]) -> bool {
        let mut any = false;
        for c in clients {
            if c.mailbox.state() != mb::STATE_REQUESTED || !c.mailbox.claim() {
                continue;
            }
            any = true;
            let (nr, args) = c.mailbox.call();
            let ctx = Ctx {
                ram: &lwk.ram,
                cores: lwk.cores(),
                app: &c.app,
                tid: c.tid,
                cpu: c.cpu,
                on_vcpu: false,
            };
            c.app.fast_calls.fetch_add(1, Ordering::Relaxed);
            match calls::dispatch(&ctx, nr, args) {
                Outcome::Ret(v) => {
                    c.mailbox.set_ret(v);
                    c.mailbox.set_state(mb::STATE_DONE);
                }
                _ => c.mailbox.set_state(mb::STATE_BOUNCE),
            }
        }
        any
    }
}
