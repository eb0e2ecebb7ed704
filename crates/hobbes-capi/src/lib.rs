//! C ABI (placeholder, being written).
