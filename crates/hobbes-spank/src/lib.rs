//! The Hobbes SPANK plugin (`hobbes_spank.so`): `srun`, `sbatch` and
//! `salloc` gain `--enclave[=SPEC]`, and each node's tasks of the step run in
//! an enclave of that node's `leviathan` (docs/slurm.md).
//!
//! * `csrc/hobbes_spank.c`: what Slurm loads: the plugin's symbols, the
//!   option table and the hooks, which read Slurm's items and call in here.
//! * [`ffi`]: the C-facing entry points and the few system calls the relay
//!   needs; every `unsafe` of the crate is there.
//! * [`plugin`]: what each hook does: create the step's enclave
//!   (`slurm_spank_init_post_opt`), join it (`slurm_spank_task_init_privileged`),
//!   report a task's end (`slurm_spank_task_exit`), destroy it
//!   (`slurm_spank_exit`, `slurm_spank_job_epilog`).
//! * [`relay`]: entering the enclave's namespaces, and the relay process
//!   that keeps the task's place for Slurm while the program runs in the
//!   enclave's PID namespace.
//!
//! The `--enclave` grammar is `hobbes_proto::slurm::EnclaveOption`'s.

#![deny(missing_docs)]

pub mod ffi;
pub mod plugin;
pub mod relay;
