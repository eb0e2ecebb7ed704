//! `hobbes-guest-agent`: `/init` of a VM enclave's guest. See the crate docs
//! (`src/lib.rs`) and README.md.

fn main() {
    vm_guest_agent::init::run_as_init()
}
