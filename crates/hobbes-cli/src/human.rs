//! How records are shown to people: sizes, id lists, ages, owners.

use std::collections::HashMap;

use hobbes_proto::model::{now_ms, EnclaveId, EnclaveKind, EnclaveRecord, Ownership};

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
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        while i + 1 < ids.len() && ids[i + 1] == ids[i] + 1 {
            i += 1;
        }
        parts.push(if ids[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", ids[i])
        });
        i += 1;
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// How long ago a Unix-ms timestamp was: "5s ago", "3m ago", "2h ago", "4d ago".
pub fn age(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
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

/// Enclave names by id, to show owners by name.
pub struct Names(HashMap<EnclaveId, String>);

impl Names {
    pub fn new(enclaves: &[EnclaveRecord]) -> Self {
        Names(enclaves.iter().map(|e| (e.id, e.name.clone())).collect())
    }

    pub fn of(&self, id: EnclaveId) -> String {
        if id == hobbes_proto::model::HOST_ENCLAVE {
            return "host".into();
        }
        self.0.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    }

    pub fn owner(&self, o: Ownership) -> String {
        match o {
            Ownership::Host => "host".into(),
            Ownership::Free => "free".into(),
            Ownership::Allocated(id) => self.of(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(id_list(&[5, 0, 1, 2]), "0-2,5");
        assert_eq!(id_list(&[]), "-");
        assert_eq!(id_list(&[3]), "3");
    }
}
