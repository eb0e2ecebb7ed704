//! Enclave kinds: the one registration list of this leviathan. Each kind is a
//! crate that implements [`EnclaveDriver`] (the API is `hobbes-kind`); the
//! daemon and `leviathan cleanup` only ever ask the [`KindRegistry`] built
//! here. Adding a kind is one `register` line (see docs/architecture.md).

pub use hobbes_kind::{
    DriverResult, EnclaveDriver, KindEnv, KindRegistry, Leftover, NodeSetup, StartContext, Started,
    CONTROL_CREDENTIAL_ENV,
};

/// The kinds a daemon runs.
pub fn registry(env: &KindEnv) -> KindRegistry {
    let mut kinds = KindRegistry::new();
    kinds.register(Box::new(kind_native::NativeKind::new(
        env.privileged,
        env.exe.clone(),
    )));
    kinds.register(Box::new(kind_lwk::LwkKind::new(
        env.privileged,
        env.exe.clone(),
    )));
    kinds.register(Box::new(kind_vm::VmKind::new(
        env.privileged,
        env.exe.clone(),
    )));
    kinds
}
