//! XASM: consistent copy-on-write snapshots of a producer's memory, published
//! as XEMEM segments. See docs/xasm.md.
