//! How records are shown to people, the same in every tool (`hobbes`, the
//! demos): sizes, id lists, an enclave's isolation class.

use hobbes_proto::model::{format_id_list, EnclaveKind, EnclaveRecord};

/// Bytes in binary units: "512 MiB", "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 || unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Ids in the kernel's list syntax: [0, 1, 2, 5] -> "0-2,5"; empty -> "-".
pub fn id_list(ids: &[u32]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        format_id_list(ids)
    }
}

/// The one-word isolation class of an enclave, as really applied.
pub fn isolation_class(e: &EnclaveRecord) -> &'static str {
    if e.kind == EnclaveKind::Host {
        "host"
    } else if e.shared {
        "shared"
    } else if e.isolation.exclusive_cores() && e.isolation.confined() {
        "exclusive"
    } else {
        "degraded"
    }
}
