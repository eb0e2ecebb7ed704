//! The seeds' in situ workloads and their coupling modes. See docs/insitu.md.
