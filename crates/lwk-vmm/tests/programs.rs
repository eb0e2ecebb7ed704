//! Unmodified static programs run in an LWK: output, exit codes, threads,
//! files, faults, signals. Compiled at test time with the host's `cc`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use lwk_vmm::{ExitKind, LaunchRequest, Lwk, LwkConfig};

fn skip(test: &str, why: &str) {
    println!("SKIP {test}: {why}");
}

/// The LWK for a test, or None (printed SKIP) where /dev/kvm is missing.
fn lwk(test: &str) -> Option<std::sync::Arc<Lwk>> {
    if let Err(e) = Lwk::available() {
        skip(test, &format!("no /dev/kvm ({e})"));
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    Some(
        Lwk::new(LwkConfig {
            numa_nodes: vec![],
            mem_bytes: 256 << 20,
            cores: vec![cores - 1],
            memory_dir: None,
            proxy_cores: vec![0],
        })
        .expect("an LWK"),
    )
}

fn cc(dir: &Path, name: &str, src: &str, flags: &[&str]) -> Option<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).unwrap();
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .status()
        .ok()?;
    st.success().then_some(out)
}

struct Run {
    code: i32,
    kind: ExitKind,
    stdout: String,
    stderr: String,
    exit: lwk_vmm::AppExit,
}

fn run(l: &std::sync::Arc<Lwk>, prog: &Path, args: &[&str], cwd: &Path) -> Run {
    let (or, ow) = rustix::pipe::pipe().unwrap();
    let (er, ew) = rustix::pipe::pipe().unwrap();
    let stdin: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut argv = vec![prog.display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let app = l
        .launch(LaunchRequest {
            program: prog.to_path_buf(),
            argv,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: cwd.to_path_buf(),
            uid: 0,
            gid: 0,
            stdin,
            stdout: ow,
            stderr: ew,
        })
        .unwrap_or_else(|e| panic!("launch: {e}"));
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::from(or).read_to_string(&mut s).unwrap();
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::from(er).read_to_string(&mut s).unwrap();
        s
    });
    let exit = app.wait();
    Run {
        code: exit.kind.shell_code(),
        kind: exit.kind,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
        exit,
    }
}

#[test]
fn a_static_c_hello_prints_and_exits() {
    let Some(l) = lwk("a_static_c_hello_prints_and_exits") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "hello",
        "#include <stdio.h>\nint main(int c, char **v){printf(\"hello %d %s\\n\", c, v[1]); return 3;}\n",
        &["-static", "-O2"],
    ) else {
        skip("a_static_c_hello_prints_and_exits", "no C compiler with static glibc");
        return;
    };
    let r = run(&l, &p, &["lwk"], dir.path());
    println!("calls: {}", r.exit.calls);
    assert_eq!(r.stdout, "hello 2 lwk\n", "stderr: {}", r.stderr);
    assert_eq!(r.kind, ExitKind::Code(3));
    assert_eq!(r.code, 3);
}

const THREADS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#define N 4
static long part[N];
static pthread_barrier_t bar;
static atomic_long total;
static void *work(void *a) {
    long id = (long)a, s = 0;
    for (long i = id; i < 1000000; i += N) s += i;
    part[id] = s;
    pthread_barrier_wait(&bar);
    atomic_fetch_add(&total, s);
    return (void *)id;
}
int main(void) {
    pthread_t t[N];
    pthread_barrier_init(&bar, 0, N);
    for (long i = 0; i < N; i++) pthread_create(&t[i], 0, work, (void *)i);
    long joined = 0;
    for (int i = 0; i < N; i++) { void *r; pthread_join(t[i], &r); joined += (long)r; }
    printf("total %ld joined %ld\n", (long)total, joined);
    return 0;
}
"#;

#[test]
fn pthreads_run_on_vcpus_and_join() {
    let Some(l) = lwk("pthreads_run_on_vcpus_and_join") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "threads",
        THREADS,
        &["-static", "-O2", "-pthread"],
    ) else {
        skip(
            "pthreads_run_on_vcpus_and_join",
            "no C compiler with static glibc",
        );
        return;
    };
    let r = run(&l, &p, &[], dir.path());
    println!("calls: {}", r.exit.calls);
    assert_eq!(
        r.stdout, "total 499999500000 joined 6\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.code, 0);
}

#[test]
fn a_null_write_ends_the_app_like_a_segfault() {
    let Some(l) = lwk("a_null_write_ends_the_app_like_a_segfault") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "crash",
        "#include <stdio.h>\nint main(void){puts(\"before\"); fflush(stdout); *(volatile int*)0 = 1; return 0;}\n",
        &["-static", "-O0"],
    ) else {
        skip("a_null_write_ends_the_app_like_a_segfault", "no C compiler");
        return;
    };
    let r = run(&l, &p, &[], dir.path());
    assert_eq!(r.stdout, "before\n");
    assert_eq!(r.kind, ExitKind::Signal(libc::SIGSEGV));
    assert_eq!(r.code, 139);
    let f = r.exit.fault.expect("a fault record");
    assert_eq!(f.vector, 14);
    assert_eq!(f.address, Some(0));
    assert!(f.to_string().contains("page fault (vector 14)"), "{f}");
}

#[test]
fn abort_ends_the_app_with_sigabrt() {
    let Some(l) = lwk("abort_ends_the_app_with_sigabrt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "abort",
        "#include <stdlib.h>\nint main(void){abort();}\n",
        &["-static"],
    ) else {
        skip("abort_ends_the_app_with_sigabrt", "no C compiler");
        return;
    };
    let r = run(&l, &p, &[], dir.path());
    assert_eq!(r.kind, ExitKind::Signal(libc::SIGABRT), "{}", r.exit.calls);
}

#[test]
fn files_are_read_and_written_through_forwarding() {
    let Some(l) = lwk("files_are_read_and_written_through_forwarding") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = r#"
#include <stdio.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>
int main(int c, char **v) {
    FILE *in = fopen(v[1], "r"); if (!in) { perror("open in"); return 1; }
    char buf[256]; size_t n = fread(buf, 1, sizeof buf, in); fclose(in);
    for (size_t i = 0; i < n; i++) if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
    int fd = open(v[2], O_CREAT | O_WRONLY | O_TRUNC, 0644); if (fd < 0) { perror("open out"); return 2; }
    write(fd, buf, n); close(fd);
    struct stat st; if (stat(v[2], &st)) { perror("stat"); return 3; }
    DIR *d = opendir("."); int files = 0; struct dirent *e;
    while ((e = readdir(d))) if (e->d_name[0] != '.') files++;
    closedir(d);
    char cwd[512]; getcwd(cwd, sizeof cwd);
    printf("%ld bytes, %d files, cwd ok %d\n", (long)st.st_size, files, strlen(cwd) > 1);
    return 0;
}
"#;
    let Some(p) = cc(dir.path(), "files", src, &["-static", "-O2"]) else {
        skip(
            "files_are_read_and_written_through_forwarding",
            "no C compiler",
        );
        return;
    };
    std::fs::write(dir.path().join("in.txt"), "hello lwk\n").unwrap();
    let r = run(&l, &p, &["in.txt", "out.txt"], dir.path());
    assert_eq!(r.code, 0, "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "HELLO LWK\n"
    );
    // files.c, files, in.txt, out.txt
    assert_eq!(r.stdout, "10 bytes, 4 files, cwd ok 1\n");
}

#[test]
fn a_static_pie_runs_at_its_chosen_base() {
    let Some(l) = lwk("a_static_pie_runs_at_its_chosen_base") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "pie",
        "#include <stdio.h>\nint main(void){printf(\"main at %p\\n\", (void*)main); return 0;}\n",
        &["-static-pie", "-O2"],
    ) else {
        skip(
            "a_static_pie_runs_at_its_chosen_base",
            "no static-pie support",
        );
        return;
    };
    let r = run(&l, &p, &[], dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("main at 0x5555"), "{}", r.stdout);
}

#[test]
fn kill_ends_a_spinning_app() {
    let Some(l) = lwk("kill_ends_a_spinning_app") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = cc(
        dir.path(),
        "spin",
        "#include <stdio.h>\nint main(void){puts(\"ready\"); fflush(stdout); for(;;); }\n",
        &["-static", "-O0"],
    ) else {
        skip("kill_ends_a_spinning_app", "no C compiler");
        return;
    };
    let (or, ow) = rustix::pipe::pipe().unwrap();
    let (_er, ew) = rustix::pipe::pipe().unwrap();
    // Page tables come from a pool that keeps its chunk: warm it first.
    run(&l, &p_true(dir.path()), &[], dir.path());
    let free_before = l.free_bytes();
    let app = l
        .launch(LaunchRequest {
            program: p.clone(),
            argv: vec!["spin".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            uid: 0,
            gid: 0,
            stdin: std::fs::File::open("/dev/null").unwrap().into(),
            stdout: ow,
            stderr: ew,
        })
        .unwrap();
    let mut first = [0u8; 6];
    std::fs::File::from(or).read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    app.signal(libc::SIGTERM).unwrap();
    let e = app.wait();
    assert_eq!(e.kind, ExitKind::Signal(libc::SIGTERM));
    assert_eq!(l.free_bytes(), free_before, "its memory is back");
}

fn p_true(dir: &Path) -> PathBuf {
    cc(dir, "true", "int main(void){return 0;}\n", &["-static"]).expect("cc")
}

/// Apps one after another in one LWK: each gets fresh page tables that the
/// shadow MMU has never seen with other contents (a reused page-table page
/// crashed the third app before).
#[test]
fn many_apps_in_turn_each_run_cleanly() {
    let Some(l) = lwk("many_apps_in_turn_each_run_cleanly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = cc(
        dir.path(),
        "a",
        "#include <stdio.h>\nint main(void){puts(\"a\"); return 0;}\n",
        &["-static", "-O2"],
    ) else {
        skip("many_apps_in_turn_each_run_cleanly", "no C compiler");
        return;
    };
    let b = cc(
        dir.path(),
        "b",
        "#include <stdio.h>\n#include <stdlib.h>\nint main(void){char *p = malloc(1 << 20); p[5] = 1; printf(\"b %d\\n\", p[5]); return 0;}\n",
        &["-static-pie", "-O2"],
    )
    .unwrap();
    for i in 0..8 {
        let (p, want) = if i % 3 == 2 {
            (&b, "b 1\n")
        } else {
            (&a, "a\n")
        };
        let r = run(&l, p, &[], dir.path());
        assert_eq!(r.code, 0, "run {i}: {:?} {}", r.exit.fault, r.stderr);
        assert_eq!(r.stdout, want, "run {i}");
    }
}

/// The programs of `scripts/lwk-programs.sh --tests`: a hello world in each
/// language and libc, pthreads and OpenMP, each checked by its output.
#[test]
fn every_language_and_threading_runtime_runs() {
    let test = "every_language_and_threading_runtime_runs";
    let Some(l) = lwk(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/lwk-programs.sh"))
        .arg("--tests")
        .arg(dir.path())
        .output()
        .expect("bash");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in listing.lines().filter(|l| l.starts_with("skip")) {
        // A compiler missing here (scripts/deps.sh installs them).
        println!("SKIP {test} ({line})");
    }
    let built = |name: &str| {
        let p = dir.path().join(name);
        p.exists().then_some(p)
    };
    let hellos = [
        "hello-glibc-static",
        "hello-glibc-static-pie",
        "hello-musl-static",
        "hello-musl-static-pie",
        "hello-rust",
        "hello-rust-static",
        "hello-fortran",
    ];
    let mut ran = 0;
    for name in hellos {
        let Some(p) = built(name) else { continue };
        let r = run(&l, &p, &["a", "b c"], dir.path());
        assert_eq!(r.code, 0, "{name}: {:?} {}", r.exit.fault, r.stderr);
        assert!(r.stdout.contains("hello, world"), "{name}: {}", r.stdout);
        assert!(r.stdout.contains("argv[2]=b c"), "{name}: {}", r.stdout);
        ran += 1;
    }
    assert!(ran >= 2, "no hello world was built: {listing}");
    // Four threads on one core exercise four vCPUs and cross-vCPU futexes.
    for (name, args, threads) in [
        ("threads", &["4"][..], "threads=4"),
        ("omp", &[][..], "omp_threads=1"),
    ] {
        let Some(p) = built(name) else { continue };
        let r = run(&l, &p, args, dir.path());
        assert!(r.stdout.contains(threads), "{name}: {}", r.stdout);
        assert_eq!(r.code, 0, "{name}: {:?} {}", r.exit.fault, r.stderr);
        assert!(
            r.stdout.contains("sum=") || r.stdout.contains("total="),
            "{name}: {}",
            r.stdout
        );
        assert!(r.stdout.trim_end().ends_with("ok"), "{name}: {}", r.stdout);
    }
}

/// What an LWK cannot run is refused at launch with the reason, and the
/// LWK stays usable.
#[test]
fn unrunnable_programs_are_refused_with_their_reason() {
    let test = "unrunnable_programs_are_refused_with_their_reason";
    let Some(l) = lwk(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(big) = cc(
        dir.path(),
        "big",
        "static char bss[512 << 20]; int main(void){ return bss[12345]; }\n",
        &["-static", "-O0"],
    ) else {
        skip(test, "no C compiler");
        return;
    };
    let dynamic = cc(dir.path(), "dyn", "int main(void){return 0;}\n", &[]).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a program\n").unwrap();
    let launch = |p: &Path| {
        l.launch(LaunchRequest {
            program: p.to_path_buf(),
            argv: vec!["x".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            uid: 0,
            gid: 0,
            stdin: std::fs::File::open("/dev/null").unwrap().into(),
            stdout: std::fs::File::create("/dev/null").unwrap().into(),
            stderr: std::fs::File::create("/dev/null").unwrap().into(),
        })
        .err()
        .map(|e| e.to_string())
    };
    let free = l.free_bytes();
    // 512 MiB of bss in a 256 MiB enclave.
    let e = launch(&big).expect("refused");
    assert!(e.contains("MiB") && e.contains("free"), "{e}");
    let e = launch(&dynamic).expect("refused");
    assert!(
        e.contains("dynamically linked") && e.contains("-static"),
        "{e}"
    );
    let e = launch(&text).expect("refused");
    assert!(e.contains("not an ELF"), "{e}");
    let e = launch(&dir.path().join("missing")).expect("refused");
    assert!(e.contains("cannot read"), "{e}");
    if let Some(i386) = cc(
        dir.path(),
        "i386",
        "void _start(void){ for(;;); }\n",
        &["-m32", "-nostdlib", "-static"],
    ) {
        let e = launch(&i386).expect("refused");
        assert!(e.contains("32-bit"), "{e}");
    }
    assert_eq!(l.free_bytes(), free, "a refusal takes no memory");
    let ok = p_true(dir.path());
    assert_eq!(run(&l, &ok, &[], dir.path()).code, 0);
}

/// Threads spread over the enclave's cores (two here), each on its own
/// vCPU, pinned; OpenMP starts one thread per core.
#[test]
fn threads_spread_over_the_enclaves_cores() {
    let test = "threads_spread_over_the_enclaves_cores";
    if let Err(e) = Lwk::available() {
        skip(test, &format!("no /dev/kvm ({e})"));
        return;
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if n < 2 {
        skip(test, "needs 2 cores");
        return;
    }
    let l = Lwk::new(LwkConfig {
        numa_nodes: vec![0],
        mem_bytes: 256 << 20,
        cores: vec![0, 1],
        memory_dir: None,
        proxy_cores: vec![0],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new("bash")
        .arg(root.join("scripts/lwk-programs.sh"))
        .arg("--tests")
        .arg(dir.path())
        .output()
        .expect("bash");
    for (name, want) in [("threads", "threads=2"), ("omp", "omp_threads=2")] {
        let p = dir.path().join(name);
        if !p.exists() {
            skip(test, &format!("{name} was not built"));
            continue;
        }
        let r = run(&l, &p, &[], dir.path());
        assert_eq!(r.code, 0, "{name}: {:?} {}", r.exit.fault, r.stderr);
        assert!(r.stdout.contains(want), "{name}: {}", r.stdout);
        assert!(r.stdout.trim_end().ends_with("ok"), "{name}: {}", r.stdout);
    }
}
