//! How records are shown to people: sizes, id lists, ages, owners.

use std::collections::HashMap;

use hobbes_proto::model::{now_ms, EnclaveId, EnclaveRecord, Ownership};

pub use hobbes_client::human::{bytes, describe_enclave, id_list, isolation_class};

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
