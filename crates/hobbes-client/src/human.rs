//! How records are shown to people, the same in every tool (`hobbes`, the
//! demos): sizes, id lists, an enclave's isolation class and description.

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

/// A few lines describing one enclave, including how isolated it really is
/// (as `hobbes create-enclave` and the demos print it); the first is a
/// title, the others are indented under it.
pub fn describe_enclave(e: &EnclaveRecord) -> Vec<String> {
    let class = isolation_class(e);
    let mut lines = vec![
        format!("enclave {} \"{}\" ({}, {class})", e.id, e.name, e.kind),
        format!(
            "  cores      {} (numa {})",
            id_list(&e.cores),
            id_list(&e.numa_nodes)
        ),
        format!(
            "  memory     {} in {} block(s): {}",
            bytes(e.mem_bytes),
            e.mem_blocks.len(),
            id_list(&e.mem_blocks)
        ),
        format!("  isolation  {}", e.isolation.summary),
    ];
    if let Some(pid) = e.control_pid {
        lines.push(format!("  control    pid {pid}, {}", e.control));
    }
    match class {
        "shared" => lines.push(
            "  note       shared enclave: pinned to cores it does not own; it is NOT isolated"
                .into(),
        ),
        "degraded" => lines.push(
            "  note       degraded: leviathan lacks root, so this enclave is NOT isolated".into(),
        ),
        _ => {}
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_id_lists_read_as_people_write_them() {
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(id_list(&[5, 0, 1, 2]), "0-2,5");
        assert_eq!(id_list(&[]), "-");
    }
}
