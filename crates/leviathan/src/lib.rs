//! `leviathan`: the Hobbes node manager (the daemon) and the enclave control
//! process, which is the same executable started as `leviathan enclave-init`.

#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod inventory;
pub mod kinds;
pub mod pmi;
pub mod pmix;
pub mod resources;
pub mod sys;
