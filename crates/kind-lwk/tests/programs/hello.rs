//! Hello world in Rust std, linked statically (`-C target-feature=+crt-static`:
//! glibc static-pie; there is no musl target on the build machine). Beyond a C
//! hello, std's start-up polls fds 0-2, installs signal handlers, reads
//! /proc/self/maps and sets up a guard page, all before `main`.
//!
//! Output: the same as hello.c (`hello, world`, `argc=N`, `argv[i]=...`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello, world");
    println!("argc={}", args.len());
    for (i, a) in args.iter().enumerate().skip(1) {
        println!("argv[{i}]={a}");
    }
}
