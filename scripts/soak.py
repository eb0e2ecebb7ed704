#!/usr/bin/env python3
"""Hostile-mix soak test of the leviathan daemon: manual, not part of CI.

    sudo python3 scripts/soak.py [--minutes 10] [--leviathan target/debug/leviathan]
                                 [--hobbes target/debug/hobbes] [--json]

As root on a Linux node with cgroup v1 or v2 and no other privileged leviathan.
Starts its own leviathan (copies of the binaries, so a rebuild cannot swap them
under a restart) on a fresh temporary state directory, log in
<state dir>/leviathan.log, and until the time is up runs at once:

  fd-flood    nobody: status requests whose first byte carries 5 descriptors
  idle-flood  nobody: every connection the daemon grants, held; reopened when closed
  half-sent   nobody: 32 connections each sending part of a frame, then nothing
  malformed   root (so nobody's per-uid cap cannot starve it): random bytes, wrong
              magic/version, bad lengths, bad JSON, XML bombs in enclave specs
  cycle       root: create-enclave (1 core, 128 MiB), launch-app --wait /bin/true,
              destroy-enclave; one enclave at a time (the host keeps core 0)
  status      root: hobbes status every second, latency measured
  chaos       root: every ~60 s (half the run if shorter) kill -9 the daemon 0-50 ms
              into a create_enclave and restart it on the same state directory,
              after `leviathan cleanup --keep-state` if a plain restart fails

The daemon's descriptors, RSS and threads are sampled every 10 s. At the end the
workers stop, the daemon gets SIGTERM (must exit 0 within 15 s), `leviathan
cleanup` runs anyway and the node is checked for leftovers (cgroups, /run/hobbes*,
processes, temporary directories). Ctrl-C ends the run early, cleaning up alike.
Exit status: 1 if the final descriptor count exceeds the start count + 64, a root
status call failed outside a deliberate restart, the daemon died on its own or
did not restart, SIGTERM was not clean, or something was left behind; 2 if the
daemon did not start; else 0.
"""

import argparse, array, collections, glob, json, os, pwd, random, re, resource, select, shutil
import signal, socket, statistics, struct, subprocess, sys, tempfile, threading, time

MAGIC, VERSION, MAX_LEN = b"HBS", 1, 4 << 20  # crates/hobbes-proto/src/frame.rs
STOP = threading.Event()  # the deadline, Ctrl-C, or no daemon left to soak
SIGNALLED = []  # signal handlers only append here: Event.set() in a handler can deadlock
DAEMON_FLAGS = ["--host-cores", "0", "--host-memory", "2048",
                "--heartbeat-interval-ms", "100", "--heartbeat-timeout-ms", "1500"]

# ------------------------------------------------------------------ the wire

def frame(payload, version=VERSION, length=None, magic=MAGIC):
    """A frame as frame.rs writes it, or one that lies about its length."""
    return magic + bytes([version]) + struct.pack("<I", len(payload) if length is None else length) + payload

def request(obj):
    # Request is #[serde(tag = "op", rename_all = "snake_case")]: {"op": "status"}.
    return frame(json.dumps(obj).encode())

STATUS = request({"op": "status"})

def connect(path, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed by the daemon")
        buf += chunk
    return buf

def read_reply(s):
    """One Response frame as 'ok <reply>' or 'error <code>: <message>'."""
    header = recv_exact(s, 8)
    if header[:4] != MAGIC + bytes([VERSION]):
        return f"reply with a bad header {header[:4]!r}"
    msg = json.loads(recv_exact(s, struct.unpack("<I", header[4:])[0]))
    if msg.get("reply") == "error":  # Response::Error(ErrorReply): {"reply":"error","code","message"}
        return f"error {msg.get('code')}: {msg.get('message')}"
    return f"ok {msg.get('reply')}"

def outcome(fn):
    """fn()'s result, or the exception it raised as a message."""
    try:
        return fn()
    except Exception as e:
        return f"{type(e).__name__}: {e}"

def exchange(path, data, fds=None, half_close=False):
    """Send data on a fresh connection (fds on its first byte), read one reply.
    A daemon that refuses early hangs up while we still send: read its reason anyway."""
    with connect(path) as s:
        try:
            if fds:
                s.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                data = data[1:]
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)  # so a short frame ends instead of stalling
        except (BrokenPipeError, ConnectionResetError):
            return outcome(lambda: read_reply(s)) + " (hung up before we finished sending)"
        return read_reply(s)

class Tally:
    """Thread-safe outcome counts. The daemon's part of a message has its numbers
    folded (pids, ids, lengths) so that keys stay few; our prefix keeps them."""
    def __init__(self):
        self.counts, self.lock = collections.Counter(), threading.Lock()

    def add(self, msg, prefix=""):
        msg = (str(msg).strip() or "?").splitlines()[0]
        msg = re.sub(r"\d+", "N", re.sub(r"magic \[[^\]]*\]", "magic [..]", msg))
        key = (prefix + msg)[:200]
        with self.lock:
            if key not in self.counts and len(self.counts) >= 60:
                key = prefix + "(other messages)"
            self.counts[key] += 1

# ---------------------------------------------------- the hostile workers

def w_fd_flood(sock, tally):
    """A frame carries at most 4 descriptors: every one the daemon is handed
    must be closed again, refused or not."""
    with open(os.devnull) as null:
        fds = array.array("i", [os.dup(null.fileno()) for _ in range(5)])
    while not STOP.is_set():
        msg = outcome(lambda: exchange(sock, STATUS, fds=fds))
        tally.add(msg)
        if not msg.startswith(("ok", "error")):
            STOP.wait(0.1)  # the daemon is restarting: do not spin

class Pool:
    """Connections held open; closed_by_daemon() yields the ones it answered or closed."""
    def __init__(self):
        self.socks, self.poller = {}, select.poll()  # poll: select() stops at fd 1024

    def add(self, s, info):
        self.socks[s.fileno()] = (s, info)
        self.poller.register(s, select.POLLIN)

    def drop(self, fd):
        s, info = self.socks.pop(fd)
        self.poller.unregister(fd)
        s.close()
        return info

    def closed_by_daemon(self, timeout_ms=0):
        for fd, _ in self.poller.poll(timeout_ms):
            s = self.socks[fd][0]
            s.settimeout(0.5)
            yield outcome(lambda: read_reply(s)), self.drop(fd)

def w_idle_flood(sock, tally, cap=5000):
    """Take every connection the daemon grants this uid and sit on them."""
    pool = Pool()
    while not STOP.is_set():
        for msg, _ in pool.closed_by_daemon():
            tally.add(msg, "held connection closed: ")
        try:
            s = connect(sock, timeout=2.0)
        except Exception as e:
            tally.add(e, "connect: ")
            STOP.wait(0.5)
            continue
        # A refusal is an error frame right after accept; silence means granted.
        p = select.poll()
        p.register(s, select.POLLIN)
        if p.poll(20) or len(pool.socks) >= cap:
            tally.add(outcome(lambda: read_reply(s)), "refused: ")
            s.close()
            STOP.wait(1.0)  # at the cap: try again later
        else:
            pool.add(s, None)
            with tally.lock:
                key = "(gauge) most connections held at once"
                tally.counts[key] = max(tally.counts[key], len(pool.socks))

def w_half_sent(sock, tally, pool_size=32, patience=20.0):
    """Stalled frames: does the daemon time them out, or keep a thread per staller?"""
    variants = {"half a payload": STATUS[:8 + (len(STATUS) - 8) // 2],
                "5 header bytes": STATUS[:5],
                "1 MiB announced, 100 bytes sent": frame(b"x" * 100, length=1 << 20)}
    pool = Pool()
    while not STOP.is_set():
        now = time.monotonic()
        for msg, (label, t0) in pool.closed_by_daemon(200):
            tally.add(msg, f"{label}: closed by the daemon after ~{now - t0:.0f} s: ")
        for fd, (_, (label, t0)) in list(pool.socks.items()):
            if now - t0 > patience:
                tally.add(f"still open after {patience:.0f} s; we closed it", f"{label}: ")
                pool.drop(fd)
        while len(pool.socks) < pool_size and not STOP.is_set():
            label = random.choice(list(variants))
            try:
                s = connect(sock, timeout=2.0)
                s.sendall(variants[label])
            except Exception as e:
                tally.add(e, "connect/send: ")
                STOP.wait(0.5)
                break
            pool.add(s, (label, time.monotonic()))

def xml_bomb(levels=9):
    """Billion laughs: each entity is ten of the previous one."""
    ents = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, levels + 1))
    return (f'<?xml version="1.0"?><!DOCTYPE native [<!ENTITY l0 "lol">{ents}]>'
            f'<native name="&l{levels};"><cpus><cores>1</cores></cpus><memory size="128"/></native>')

def w_malformed(sock, tally, hobbes, bomb_file):
    bomb = xml_bomb()
    # Never a valid spec (the name is bad, there is no memory): we run as root.
    spec = {"name": bomb, "kind": "native", "cpus": {"count": 1}, "memory": {"size_mib": 0}}
    create = lambda **kw: request({"op": "create_enclave", "spec": dict(spec, **kw)})
    cases = {
        "random bytes": lambda: os.urandom(random.randint(1, 256)),
        "wrong magic": lambda: frame(STATUS[8:], magic=b"HBX"),
        "http request": lambda: b"GET / HTTP/1.1\r\nHost: leviathan\r\n\r\n",
        "wrong version": lambda: frame(STATUS[8:], version=2),
        "length over 4 MiB": lambda: frame(b"{}", length=MAX_LEN + 1),
        "length u32 max": lambda: frame(b"", length=0xFFFFFFFF),
        "length longer than sent": lambda: frame(STATUS[8:], length=len(STATUS)),
        "bad json": lambda: frame(b'{"op": "status"'),
        "unknown op": lambda: request({"op": "format_disk"}),
        "nested json 200k deep": lambda: frame(b"[" * 200000 + b"]" * 200000),
        "xml bomb as name": lambda: create(),
        "xml bomb as kind": lambda: create(kind=bomb),
        "3 MiB name": lambda: create(name="a" * (3 << 20)),
    }
    last_cli = 0.0
    while not STOP.is_set():
        label = random.choice(list(cases))
        msg = outcome(lambda: exchange(sock, cases[label](), half_close=True))
        tally.add(msg, f"{label}: ")
        if not msg.startswith(("ok", "error")):
            STOP.wait(0.1)
        if time.monotonic() - last_cli > 5:  # the CLI parses enclave XML itself
            last_cli = time.monotonic()
            p = subprocess.run([hobbes, "--socket", sock, "create-enclave", bomb_file],
                               capture_output=True, text=True, timeout=60)
            tally.add(f"rc={p.returncode}: {p.stderr or p.stdout}".replace(bomb_file, "FILE"),
                      "cli create-enclave xml bomb: ")

def fork_as_nobody(name, fn, deadline):
    """fork, drop to nobody, run fn(tally) until SIGTERM; the tally comes back as
    JSON on a pipe. Called before any thread starts, so forking is safe."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return {"name": name, "pid": pid, "pipe": r}
    os.close(r)
    tally, code = Tally(), 1
    try:
        os.setsid()  # Ctrl-C goes to the parent, which stops us in order
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: SIGNALLED.append(1))
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle flood holds many
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        parent = os.getppid()

        def watchdog():  # also stop if the parent died without telling us
            while not STOP.wait(0.2):
                if SIGNALLED or os.getppid() != parent or time.time() > deadline:
                    STOP.set()
        threading.Thread(target=watchdog, daemon=True).start()
        fn(tally)
        code = 0
    except BaseException as e:
        tally.add(f"{type(e).__name__}: {e}", "worker crashed: ")
    finally:
        try:
            os.write(w, json.dumps(dict(tally.counts)).encode())
        finally:
            os._exit(code)

def reap_child(child, timeout=15.0):
    """SIGTERM a worker (SIGKILL if it lingers) and read its tally."""
    os.kill(child["pid"], signal.SIGTERM)
    end = time.monotonic() + timeout
    while os.waitpid(child["pid"], os.WNOHANG) == (0, 0):
        if time.monotonic() > end:
            os.kill(child["pid"], signal.SIGKILL)
            os.waitpid(child["pid"], 0)
            break
        time.sleep(0.05)
    with os.fdopen(child["pipe"], "rb") as f:
        data = f.read()
    return json.loads(data) if data else {"worker killed: no report": 1}

# ----------------------------------------------------- the node and the daemon

def proc_sample(pid):
    """{fds, rss_kb, threads} of a live process, or None."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
        return {"fds": fds, "rss_kb": int(st["VmRSS"].split()[0]), "threads": int(st["Threads"])}
    except (OSError, KeyError, ValueError):
        return None

def node_traces():
    """What a leviathan leaves on the node: /run/hobbes* and hobbes* cgroups (v2 at
    the top; v1 cpuset and memory, or a hybrid's v2, a few levels down)."""
    found = set(glob.glob("/run/hobbes*") + glob.glob("/sys/fs/cgroup/hobbes*"))
    for root in ("/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"):
        for path, dirs, _ in os.walk(root):
            found |= {os.path.join(path, d) for d in dirs if d.startswith("hobbes")}
            deep = path[len(root):].count("/") >= 3
            dirs[:] = [] if deep else [d for d in dirs if not d.startswith("hobbes")]
    return found

class Soak:
    def __init__(self, args, traces_before):
        self.args, self.t0, self.traces_before = args, time.monotonic(), traces_before
        self.bindir = tempfile.mkdtemp(prefix="hobbes-soak-bin-")
        os.chmod(self.bindir, 0o755)
        self.lev = shutil.copy2(args.leviathan, os.path.join(self.bindir, "leviathan"))
        self.hob = shutil.copy2(args.hobbes, os.path.join(self.bindir, "hobbes"))
        self.dir = tempfile.mkdtemp(prefix="hobbes-soak-")  # leviathan makes it 0755 for nobody
        self.sock, self.log = (os.path.join(self.dir, f) for f in ("leviathan.sock", "leviathan.log"))
        self.daemon, self.pids, self.start, self.final = None, [], None, None
        self.down = threading.Event()  # set while we take the daemon down on purpose
        self.epoch = 0                 # bumped at each deliberate kill and restart
        # The host keeps core 0 and the node may have only 2 cores: one enclave at a time.
        self.enclave_lock = threading.Lock()
        self.tallies = {n: Tally() for n in ("malformed", "cycle", "status")}
        self.latencies, self.status_failures = [], 0
        self.events, self.samples, self.children, self.threads = [], [], [], []
        self.problems, self.notes = [], []  # problems fail the run; notes do not

    def elapsed(self):
        return round(time.monotonic() - self.t0, 1)

    def hobbes(self, *argv, timeout=30):
        """(exit code, stdout) or (exit code or None, first line of the error)."""
        try:
            p = subprocess.run([self.hob, "--socket", self.sock, *argv],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout} s"
        if p.returncode == 0:
            return 0, p.stdout
        return p.returncode, (p.stderr.strip() or p.stdout.strip() or "(no output)").splitlines()[0]

    def log_summary(self, tail=5):
        """Line and WARN/ERROR/panic counts, and the last lines (the log may be large)."""
        counts, last = collections.Counter(), collections.deque(maxlen=tail)
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    counts["lines"] += 1
                    counts.update(w for w in ("WARN", "ERROR", "panicked") if w in line)
                    last.append(line.rstrip())
        except OSError as e:
            last.append(str(e))
        return {"lines": counts["lines"], "warn": counts["WARN"], "error": counts["ERROR"],
                "panics": counts["panicked"], "tail": list(last)}

    def start_daemon(self):
        """Start leviathan and wait until `hobbes status` answers: (ok, what happened)."""
        with open(self.log, "ab") as log:
            p = subprocess.Popen([self.lev, "--state-dir", self.dir, *DAEMON_FLAGS],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)  # Ctrl-C is for us, not for it
        self.pids.append(p.pid)
        t = time.monotonic()
        while time.monotonic() < t + 20:
            if p.poll() is not None:
                return False, f"exited with {p.returncode}: {' | '.join(self.log_summary(2)['tail'])}"
            if self.hobbes("status", timeout=5)[0] == 0:
                self.daemon = p
                return True, f"ready in {time.monotonic() - t:.1f} s (pid {p.pid})"
            time.sleep(0.1)
        p.kill()
        p.wait()
        return False, f"not ready within 20 s: {' | '.join(self.log_summary(2)['tail'])}"

    def cleanup(self, keep_state):
        argv = [self.lev, "cleanup", *(["--keep-state"] if keep_state else []), "--state-dir", self.dir]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "timed out after 60 s"
        return f"rc={p.returncode}: " + " | ".join((p.stdout + p.stderr).strip().splitlines())

    def destroy_leftovers(self):
        """Destroy soak-* enclaves a kill or a failed step left: they hold the only free core."""
        rc, out = self.hobbes("--json", "list-enclaves")
        recs = json.loads(out) if rc == 0 else []
        for rec in recs if isinstance(recs, list) else recs.get("enclaves", []):
            if str(rec.get("name", "")).startswith("soak-"):
                rc, msg = self.hobbes("destroy-enclave", str(rec["id"]))
                self.tallies["cycle"].add("ok" if rc == 0 else msg,
                                          f"destroy leftover {rec.get('state')} enclave: ")

    def restart(self, ev):
        """Restart on the same state dir; `leviathan cleanup --keep-state` first if that fails."""
        ok, ev["restart"] = self.start_daemon()
        if not ok:
            ev["cleanup"] = self.cleanup(keep_state=True)
            ok, ev["restart_after_cleanup"] = self.start_daemon()
        if not ok:
            self.problems.append(f"the daemon could not be restarted at {ev['t_s']} s")
            self.daemon = None
            STOP.set()  # nothing left to soak

    def kill_during_create(self, k):
        ev = {"t_s": self.elapsed(), "delay_ms": round(random.uniform(0, 50), 1)}
        self.destroy_leftovers()  # the create must get as far as it can
        spec = {"name": f"soak-kill-{k}", "kind": "native", "cpus": {"count": 1},
                "memory": {"size_mib": 128}}
        with connect(self.sock, timeout=30) as s:
            s.sendall(request({"op": "create_enclave", "spec": spec}))
            time.sleep(ev["delay_ms"] / 1000)
            self.down.set()
            self.epoch += 1
            os.kill(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait()
            ev["create_reply"] = outcome(lambda: read_reply(s))
        self.restart(ev)
        return ev

    # Each w_* method is a root thread running until STOP.
    def w_chaos(self):
        interval, k = min(60.0, self.args.minutes * 30), 0
        while not STOP.wait(interval * random.uniform(0.8, 1.2)):
            with self.enclave_lock:
                if STOP.is_set():
                    break
                k += 1
                try:
                    self.events.append(self.kill_during_create(k))
                except Exception as e:
                    self.events.append({"t_s": self.elapsed(), "error": f"{type(e).__name__}: {e}"})
                self.epoch += 1
                self.down.clear()

    def w_cycle(self):
        n = 0
        while not STOP.wait(0.1):
            with self.enclave_lock:
                n += 1
                for step, argv in (("create-enclave", ["--name", f"soak-{n}", "--cores", "1", "--memory", "128"]),
                                   ("launch-app", ["--wait", f"soak-{n}", "/bin/true"]),
                                   ("destroy-enclave", [f"soak-{n}"])):
                    rc, msg = self.hobbes(step, *argv)
                    self.tallies["cycle"].add("ok" if rc == 0 else msg, f"{step}: ")
                    if rc != 0:
                        self.destroy_leftovers()
                        break

    def w_status(self):
        tick = time.monotonic()
        while not STOP.wait(max(0.0, tick + 1.0 - time.monotonic())):
            tick, epoch, down = time.monotonic(), self.epoch, self.down.is_set()
            rc, msg = self.hobbes("status", timeout=10)
            if rc == 0:
                self.latencies.append(time.monotonic() - tick)
                self.tallies["status"].add("ok")
            elif down or self.down.is_set() or epoch != self.epoch:
                self.tallies["status"].add(msg, "during a deliberate restart: ")
            else:
                self.status_failures += 1
                self.tallies["status"].add(msg, "FAILED: ")

    def w_malformed(self):
        w_malformed(self.sock, self.tallies["malformed"], self.hob, os.path.join(self.bindir, "bomb.xml"))

    def w_sampler(self):
        while not STOP.wait(10):
            d = None if self.down.is_set() else self.daemon
            if d and (s := proc_sample(d.pid)):
                self.samples.append(dict(s, t_s=self.elapsed(), pid=d.pid))

    def run(self):
        """Start the workers; wait for the deadline or a signal; restart a daemon that died by itself."""
        self.start = proc_sample(self.daemon.pid)
        self.samples.append(dict(self.start, t_s=self.elapsed(), pid=self.daemon.pid))
        deadline = time.time() + self.args.minutes * 60
        with open(os.path.join(self.bindir, "bomb.xml"), "w") as f:
            f.write(xml_bomb())
        for name, fn in (("fd-flood", w_fd_flood), ("idle-flood", w_idle_flood), ("half-sent", w_half_sent)):
            self.children.append(fork_as_nobody(name, lambda t, fn=fn: fn(self.sock, t), deadline + 60))
        for fn in (self.w_malformed, self.w_cycle, self.w_status, self.w_chaos, self.w_sampler):
            self.threads.append(threading.Thread(target=fn, name=fn.__name__, daemon=True))
            self.threads[-1].start()
        while time.time() < deadline and not STOP.is_set() and not SIGNALLED:
            time.sleep(0.2)
            if self.down.is_set() or not self.daemon or self.daemon.poll() is None:
                continue
            with self.enclave_lock:
                if self.down.is_set() or not self.daemon or self.daemon.poll() is None:
                    continue  # a deliberate kill raced us
                self.down.set()
                ev = {"t_s": self.elapsed(), "died_on_its_own": self.daemon.returncode,
                      "log": self.log_summary(3)["tail"]}
                self.problems.append(f"the daemon died on its own at {ev['t_s']} s")
                self.restart(ev)
                self.events.append(ev)
                self.down.clear()
        if SIGNALLED:
            self.problems.append("interrupted")

    def finish(self, started):
        """Stop the workers, measure, SIGTERM the daemon, clean up, look for leftovers."""
        STOP.set()
        workers = {c["name"]: reap_child(c) for c in self.children}
        for t in self.threads:
            t.join(timeout=120)
        workers.update({n: dict(t.counts) for n, t in self.tallies.items() if t.counts})
        limit = (self.start or {"fds": 0})["fds"] + 64
        sigterm, alive = None, self.daemon is not None and self.daemon.poll() is None
        if alive:
            for _ in range(20):  # the workers' connections are gone; let it close its ends
                self.final = proc_sample(self.daemon.pid)
                if self.final and self.final["fds"] <= limit:
                    break
                time.sleep(0.5)
            if self.final:
                self.samples.append(dict(self.final, t_s=self.elapsed(), pid=self.daemon.pid))
                if self.final["fds"] > limit:
                    self.problems.append(f"descriptor leak: {self.final['fds']} open at the end, "
                                         f"{limit - 64} at the start")
            t = time.monotonic()
            self.daemon.send_signal(signal.SIGTERM)
            try:
                rc = self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                rc = f"still running after 15 s; killed (exit {self.daemon.wait()})"
            sigterm = {"exit": rc, "seconds": round(time.monotonic() - t, 1)}
            if rc != 0:
                self.problems.append(f"SIGTERM was not clean: {rc}")
        elif started:
            self.problems.append("no daemon was running at the end")
        if self.status_failures:
            self.problems.append(f"{self.status_failures} root status calls failed")
        log = self.log_summary()  # now: cleanup removes the state directory
        cleanup = self.cleanup(keep_state=False)
        left = self.left_behind()
        self.problems += [f"left behind: {x}" for x in left]
        lat = sorted(self.latencies)
        return {"ok": not self.problems, "problems": self.problems, "notes": self.notes,
                "minutes": self.args.minutes, "state_dir": self.dir, "daemon_pids": self.pids,
                "daemon": {"start": self.start, "final": self.final, "samples": self.samples,
                           **{k: {"min": min(v), "max": max(v)} for k in ("fds", "rss_kb", "threads")
                              if (v := [s[k] for s in self.samples])}},
                "status": {"ok": len(lat), "failures": self.status_failures,
                           "median_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                           "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1) if lat else None},
                "workers": workers, "restarts": self.events, "sigterm": sigterm, "log": log,
                "cleanup": cleanup, "left_behind": left}

    def processes(self):
        """{pid: (cmdline, exe)} of every process but us."""
        procs = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                procs[int(pid)] = (cmd, os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                continue  # gone, a zombie, or a kernel thread
        procs.pop(os.getpid(), None)
        return procs

    def left_behind(self):
        """What the run left on the node (removed here, so the next run starts clean)."""
        ours = lambda cmd, exe: self.dir in cmd or exe.startswith(self.bindir)
        left = []
        for pid, (cmd, exe) in self.processes().items():
            if ours(cmd, exe):
                left.append(f"process {pid}: {cmd}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        # Someone else's leviathan (another test) may have taken the node meanwhile:
        # its cgroups and /run files are not ours. Give it a minute to finish.
        for _ in range(60):
            others = [f"{pid}: {cmd}" for pid, (cmd, exe) in self.processes().items()
                      if os.path.basename(cmd.split(" ")[0]) == "leviathan" and not ours(cmd, exe)]
            if not others:
                left += sorted(node_traces() - self.traces_before)
                break
            time.sleep(1)
        else:
            self.notes.append(f"cgroups and /run/hobbes* not checked: another leviathan runs ({others[0]})")
        if os.path.exists(self.dir):
            left.append(f"state directory {self.dir}")
            shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.bindir, ignore_errors=True)  # our copies, not the daemon's doing
        return left

def print_summary(r):
    print(f"soak: {r['minutes']} min, state dir {r['state_dir']}: {'OK' if r['ok'] else 'FAILED'}")
    d = r["daemon"]
    for k in ("fds", "rss_kb", "threads"):
        if k in d:
            print(f"  daemon {k:8} start {(d['start'] or {}).get(k)}, min {d[k]['min']}, "
                  f"max {d[k]['max']}, final {(d['final'] or {}).get(k)}  (sampled every 10 s)")
    s = r["status"]
    print(f"  root hobbes status: {s['ok']} ok, {s['failures']} failed, "
          f"median {s['median_ms']} ms, p99 {s['p99_ms']} ms")
    print(f"  daemon pids: {r['daemon_pids']}")
    for ev in r["restarts"]:
        print(f"  kill/restart: {json.dumps(ev)}")
    for name, counts in r["workers"].items():
        print(f"  {name}:")
        for msg, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
            print(f"    {n:7}  {msg}")
    print(f"  SIGTERM: {r['sigterm']}")
    lg = r["log"]
    print(f"  daemon log: {lg['lines']} lines, {lg['warn']} WARN, {lg['error']} ERROR, "
          f"{lg['panics']} panics; it ended:")
    for line in lg["tail"]:
        print(f"    {line[:200]}")
    print(f"  leviathan cleanup: {r['cleanup']}")
    print(f"  left behind: {', '.join(r['left_behind']) or 'nothing'}")
    for n in r["notes"]:
        print(f"  note: {n}")
    for p in r["problems"]:
        print(f"  PROBLEM: {p}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--leviathan", default="target/debug/leviathan")
    ap.add_argument("--hobbes", default="target/debug/hobbes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak.py: run it as root (cgroups, dropping to nobody)")
    for b in (args.leviathan, args.hobbes):
        if not os.access(b, os.X_OK):
            sys.exit(f"soak.py: {b} is not an executable; build it first")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: SIGNALLED.append(1))
    soak, started = Soak(args, node_traces()), False
    try:
        started, msg = soak.start_daemon()
        if started:
            soak.run()
        else:
            soak.problems.append(f"the daemon did not start: {msg}")
    except BaseException as e:  # report it, and clean up all the same
        soak.problems.append(f"soak.py failed: {type(e).__name__}: {e}")
    finally:
        report = soak.finish(started)
    report["exit"] = 0 if report["ok"] else 1 if started else 2
    print(json.dumps(report, indent=1)) if args.json else print_summary(report)
    return report["exit"]

if __name__ == "__main__":
    sys.exit(main())
