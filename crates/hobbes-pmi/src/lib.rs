//! Remora's PMI-1 ("simple PMI") server: what an unmodified MPICH process talks to at
//! `MPI_Init` to learn its rank and exchange its addresses with the other ranks.
//!
//! - [`wire`]: client bytes to commands, replies to bytes (never panics on any input).
//! - [`job`]: one job's state: key/value space, barriers, name service, finalize and abort,
//!   events for the launcher and a [`JobObserver`] hook to mirror it all elsewhere.
//! - [`server`]: serving a rank on any stream, over socketpairs (`PMI_FD`) or TCP
//!   (`PMI_PORT` + `PMI_ID`), and the environment a launcher gives each process.
//!
//! The wire behaviour is specified in this crate's README.

#![deny(missing_docs)]

pub mod job;
pub mod server;
pub mod wire;

pub use job::{ClaimError, ConfigError, Job, JobConfig, JobEvent, JobObserver, NoopObserver};
pub use server::{serve_rank, PmiTransport, ServeEnd, ServeError, SocketpairServer, TcpServer};
pub use wire::{Command, Reply, WireError};
