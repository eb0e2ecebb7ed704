//! What a user asks for when creating an enclave, and its XML form.
//!
//! ```xml
//! <native name="sim" shared="false">
//!   <cpus numa="0">
//!     <cores>1</cores>          <!-- a count ... -->
//!     <core id="3"/>            <!-- ... and/or explicit core ids -->
//!   </cpus>
//!   <memory size="512" numa="-1"/>   <!-- MiB; numa -1: any node -->
//!   <memory><block id="12"/></memory> <!-- or explicit memory blocks -->
//! </native>
//! ```
//!
//! The root element names the kind, as the original's `<pisces>` files did:
//! `<native>`, `<lwk>` (an LWK enclave's cores are always its own, so it
//! takes neither `shared="true"` nor `ipc="host"`) or `<vm>`, which also
//! takes the guest's OS/R stack and what of the host it sees:
//!
//! ```xml
//! <vm name="ana">
//!   <cpus><cores>1</cores></cpus>
//!   <memory size="1024"/>
//!   <kernel>/boot/vmlinuz-6.1.0-47-cloud-amd64</kernel>  <!-- default: the node's image -->
//!   <initrd>/path/initrd.img</initrd>                    <!-- default: the node's image -->
//!   <cmdline>mitigations=off</cmdline>                  <!-- appended to the base line -->
//!   <accel>auto</accel>                                  <!-- auto (default), kvm or tcg -->
//!   <share path="/home/u/run" writable="true"/>          <!-- same path in the guest -->
//! </vm>
//! ```
//! The schema is documented in `docs/nis-schema.md` ("Enclave spec and its XML form").

use serde::{Deserialize, Serialize};

use crate::model::{BlockId, CoreId, EnclaveKind};

/// Longest accepted enclave name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest XML document accepted (bytes).
pub const MAX_XML_LEN: usize = 64 * 1024;

/// CPU part of a request: a count, explicit ids, or both (ids first, then
/// `count` more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuRequest {
    /// How many cores besides `ids`, picked by the allocator (from free cores,
    /// or from host cores for a shared enclave); 0: only `ids`.
    #[serde(default)]
    pub count: u32,
    /// These cores (Linux CPU numbers), each listed once.
    #[serde(default)]
    pub ids: Vec<CoreId>,
    /// Preferred NUMA node for counted cores; `None` lets the allocator pick one.
    #[serde(default)]
    pub numa: Option<u32>,
}

impl CpuRequest {
    /// True when it asks for no core at all.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.ids.is_empty()
    }
}

/// Memory part of a request: a size in MiB, explicit blocks, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemRequest {
    /// MiB besides `blocks`, rounded up to whole memory blocks; 0: only `blocks`.
    #[serde(default)]
    pub size_mib: u64,
    /// These memory blocks, each listed once.
    #[serde(default)]
    pub blocks: Vec<BlockId>,
    /// Preferred NUMA node for `size_mib`; `None` (XML `numa="-1"` or absent):
    /// any node, the cores' node first.
    #[serde(default)]
    pub numa: Option<u32>,
}

impl MemRequest {
    /// True when it asks for no memory at all.
    pub fn is_empty(&self) -> bool {
        self.size_mib == 0 && self.blocks.is_empty()
    }
}

/// A complete enclave request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveSpec {
    /// Unique enclave name: 1-64 of `[A-Za-z0-9._-]`, not all digits, not
    /// starting with `-` or `.` ([`validate_name`]).
    pub name: String,
    /// Which kind to create (`native` or `lwk`; `host` is refused). XML: the
    /// root element.
    pub kind: EnclaveKind,
    /// Pinned to host cores without owning them (not isolated). Native only.
    #[serde(default)]
    pub shared: bool,
    /// Stay in the host's IPC namespace (instead of a new one), so MPI
    /// processes in several enclaves can use shared memory with each other.
    /// Native only.
    #[serde(default)]
    pub host_ipc: bool,
    /// Its cores; at least one.
    pub cpus: CpuRequest,
    /// Its memory; some is required.
    pub memory: MemRequest,
    /// The VM kind's settings; `None` means the defaults for a `vm`, and
    /// must be `None` for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmSpec>,
}

/// What a VM enclave runs and sees of the host (`<vm>` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Guest kernel (a host path the owner can read); `None`: the node's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Guest initramfs (a host path the owner can read); `None`: the node's
    /// image, whose init is the Hobbes guest agent. One of your own must
    /// start that agent too, or the enclave never becomes ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Appended to the base kernel command line (console, panic handling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// What runs the guest.
    #[serde(default)]
    pub accel: VmAccel,
    /// Host directories visible in the guest, each at its host path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<VmShare>,
}

/// The accelerator a VM runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAccel {
    /// KVM where the CPU has hardware virtualization, TCG otherwise.
    #[default]
    Auto,
    /// KVM, or refuse.
    Kvm,
    /// QEMU's emulation, even where KVM would work.
    Tcg,
}

impl VmAccel {
    /// The name as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmAccel::Auto => "auto",
            VmAccel::Kvm => "kvm",
            VmAccel::Tcg => "tcg",
        }
    }

    /// Parse `auto`, `kvm` or `tcg`; the error names the choices.
    pub fn parse(name: &str) -> Result<VmAccel, String> {
        match name.trim() {
            "auto" => Ok(VmAccel::Auto),
            "kvm" => Ok(VmAccel::Kvm),
            "tcg" => Ok(VmAccel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: expected auto, kvm or tcg"
            )),
        }
    }
}

/// A host directory shared with a VM's guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShare {
    /// Absolute host path; the guest sees it at the same path.
    pub path: String,
    /// The guest may write it (read-only otherwise).
    #[serde(default)]
    pub writable: bool,
}

/// Most shares one VM may have.
pub const MAX_VM_SHARES: usize = 16;

impl VmSpec {
    /// Check what can be checked without the node.
    pub fn validate(&self) -> Result<(), String> {
        for (what, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if let Some(p) = path {
                if !p.starts_with('/') {
                    return Err(format!("<{what}> must be an absolute path, got {p:?}"));
                }
            }
        }
        if let Some(c) = &self.cmdline {
            if c.len() > 1024 || c.contains(['\n', '\0']) {
                return Err("<cmdline> must be one line of at most 1024 bytes".to_string());
            }
        }
        if self.shares.len() > MAX_VM_SHARES {
            return Err(format!(
                "{} shares: a VM takes at most {MAX_VM_SHARES}",
                self.shares.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for share in &self.shares {
            let p = share.path.as_str();
            if !p.starts_with('/') || p.split('/').any(|c| c == "." || c == "..") {
                return Err(format!(
                    "share path {p:?} must be absolute, without \".\" or \"..\""
                ));
            }
            if p.contains(['\0', ',', '\n']) {
                return Err(format!("share path {p:?} has a character QEMU cannot take"));
            }
            let norm = p.trim_end_matches('/');
            // The guest's own tree lives there: sharing over it would break the guest.
            const GUEST_OWN: [&str; 11] = [
                "", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/proc", "/sys", "/dev", "/etc",
                "/.hobbes",
            ];
            if GUEST_OWN.contains(&norm)
                || norm.starts_with("/usr/")
                || norm.starts_with("/.hobbes/")
            {
                return Err(format!(
                    "share path {p:?} would cover the guest's own files (the host's /usr is shared read-only already); share a directory of your own"
                ));
            }
            if !seen.insert(norm.to_string()) {
                return Err(format!("share path {p:?} is listed twice"));
            }
        }
        Ok(())
    }
}

/// A spec that cannot be used, with the line it came from when it came from XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct SpecError {
    /// 1-based line of the XML document the problem is on; `None` for a spec
    /// that did not come from XML.
    pub line: Option<u32>,
    /// What is wrong, for people (without the `line N: ` prefix `Display` adds).
    pub message: String,
}

impl SpecError {
    fn at(doc: &roxmltree::Document, node: roxmltree::Node, message: impl Into<String>) -> Self {
        SpecError {
            line: Some(doc.text_pos_at(node.range().start).row),
            message: message.into(),
        }
    }
    fn plain(message: impl Into<String>) -> Self {
        SpecError {
            line: None,
            message: message.into(),
        }
    }
}

impl EnclaveSpec {
    /// Check what can be checked without knowing the node.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name).map_err(SpecError::plain)?;
        if self.kind == EnclaveKind::Host {
            return Err(SpecError::plain(
                "the host enclave (0) exists already and cannot be created",
            ));
        }
        if self.kind == EnclaveKind::Lwk {
            // Kitten's cores are its own; a lightweight kernel sharing its
            // cores with the host's scheduler would lose the point of it.
            if self.shared {
                return Err(SpecError::plain(
                    "an lwk enclave cannot be shared: its vCPUs always run on cores of its own; drop shared=\"true\" (--shared), or use a native enclave",
                ));
            }
            if self.host_ipc {
                return Err(SpecError::plain(
                    "ipc=\"host\" does not apply to an lwk enclave: its programs run in a guest, which has no IPC namespace to share; drop ipc=\"host\" (--host-ipc)",
                ));
            }
        }
        match (&self.vm, self.kind) {
            (Some(vm), EnclaveKind::Vm) => vm.validate().map_err(SpecError::plain)?,
            (Some(_), kind) => {
                return Err(SpecError::plain(format!(
                    "<kernel>, <initrd>, <cmdline>, <accel> and <share> are for vm enclaves, not {kind}"
                )))
            }
            (None, _) => {}
        }
        if self.kind == EnclaveKind::Vm && (self.shared || self.host_ipc) {
            return Err(SpecError::plain(
                "a vm enclave cannot be shared and has no IPC namespace to share: drop shared=\"true\" (--shared) and ipc=\"host\" (--host-ipc)",
            ));
        }
        if self.cpus.is_empty() {
            return Err(SpecError::plain(
                "an enclave needs at least one core: give <cores>N</cores> or <core id=\"N\"/>",
            ));
        }
        if self.memory.is_empty() {
            return Err(SpecError::plain(
                "an enclave needs memory: give <memory size=\"MiB\"/> or <block id=\"N\"/>",
            ));
        }
        let mut ids = self.cpus.ids.clone();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(SpecError::plain("a core id is listed twice"));
        }
        let mut blocks = self.memory.blocks.clone();
        blocks.sort_unstable();
        if blocks.windows(2).any(|w| w[0] == w[1]) {
            return Err(SpecError::plain("a memory block is listed twice"));
        }
        Ok(())
    }

    /// Parse the XML form. Errors name the line.
    pub fn from_xml(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_XML_LEN {
            return Err(SpecError::plain(format!(
                "document is {} bytes; the limit is {MAX_XML_LEN}",
                text.len()
            )));
        }
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| SpecError {
            line: Some(e.pos().row),
            message: format!("malformed XML: {e}"),
        })?;
        let root = doc.root_element();
        let tag = root.tag_name().name();
        let kind = EnclaveKind::from_name(tag)
            .filter(|k| *k != EnclaveKind::Host)
            .ok_or_else(|| {
                SpecError::at(
                    &doc,
                    root,
                    format!(
                        "unknown enclave kind <{tag}>: expected {}",
                        EnclaveKind::creatable_list("<", ">")
                    ),
                )
            })?;
        let name = root
            .attribute("name")
            .ok_or_else(|| SpecError::at(&doc, root, "missing attribute name=\"...\""))?
            .to_string();
        let shared = bool_attr(&doc, root, "shared")?.unwrap_or(false);
        for attr in root.attributes() {
            if !matches!(attr.name(), "name" | "shared" | "ipc") {
                return Err(SpecError::at(
                    &doc,
                    root,
                    format!(
                        "unknown attribute {}= on <{}>",
                        attr.name(),
                        root.tag_name().name()
                    ),
                ));
            }
        }
        let mut spec = EnclaveSpec {
            name,
            kind,
            shared,
            host_ipc: match root.attribute("ipc") {
                None | Some("private") => false,
                Some("host") => true,
                Some(v) => {
                    return Err(SpecError::at(
                        &doc,
                        root,
                        format!("ipc=\"{v}\": expected \"private\" or \"host\""),
                    ))
                }
            },
            cpus: CpuRequest::default(),
            memory: MemRequest::default(),
            vm: None,
        };
        for child in root.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "cpus" => parse_cpus(&doc, child, &mut spec.cpus)?,
                "memory" => parse_memory(&doc, child, &mut spec.memory)?,
                tag @ ("kernel" | "initrd" | "cmdline" | "accel" | "share")
                    if kind == EnclaveKind::Vm =>
                {
                    let vm = spec.vm.get_or_insert_with(VmSpec::default);
                    parse_vm_setting(&doc, child, tag, vm)?
                }
                other => {
                    let expected = if kind == EnclaveKind::Vm {
                        "<cpus>, <memory>, <kernel>, <initrd>, <cmdline>, <accel> or <share>"
                    } else {
                        "<cpus> or <memory>"
                    };
                    return Err(SpecError::at(
                        &doc,
                        child,
                        format!("unknown element <{other}> in <{tag}>: expected {expected}"),
                    ));
                }
            }
        }
        spec.validate().map_err(|mut e| {
            e.line
                .get_or_insert(doc.text_pos_at(root.range().start).row);
            e
        })?;
        Ok(spec)
    }
}

/// Names are what users type in the shell: keep them simple.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "enclave name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "enclave name {name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    // "-rf" would read as an option in the shell, "." and ".." as directories.
    if name.starts_with(['-', '.']) {
        return Err(format!(
            "enclave name {name:?} may not start with '-' or '.' (the shell would read it as an option or a path)"
        ));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "enclave name {name:?} is all digits and would be mistaken for an id"
        ));
    }
    Ok(())
}

fn bool_attr(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    name: &str,
) -> Result<Option<bool>, SpecError> {
    match node.attribute(name) {
        None => Ok(None),
        // The schema's words only: "1" or "yes" would be guesses.
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(SpecError::at(
            doc,
            node,
            format!("{name}=\"{v}\" is not a boolean (true/false)"),
        )),
    }
}

fn num<T: std::str::FromStr>(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    what: &str,
    text: &str,
) -> Result<T, SpecError> {
    text.trim().parse().map_err(|_| {
        SpecError::at(
            doc,
            node,
            format!(
                "{what} must be a non-negative integer, got {:?}",
                text.trim()
            ),
        )
    })
}

/// numa="-1" (or absent) means any node.
fn numa_attr(doc: &roxmltree::Document, node: roxmltree::Node) -> Result<Option<u32>, SpecError> {
    match node.attribute("numa") {
        None => Ok(None),
        Some(v) if v.trim() == "-1" => Ok(None),
        Some(v) => num(doc, node, "numa", v).map(Some),
    }
}

fn id_of(doc: &roxmltree::Document, node: roxmltree::Node) -> Result<u32, SpecError> {
    let text = node
        .attribute("id")
        .or_else(|| node.text())
        .ok_or_else(|| {
            SpecError::at(
                doc,
                node,
                format!(
                    "<{}> needs an id: <{} id=\"N\"/>",
                    node.tag_name().name(),
                    node.tag_name().name()
                ),
            )
        })?;
    num(doc, node, "id", text)
}

/// One of `<vm>`'s own elements.
fn parse_vm_setting(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    tag: &str,
    vm: &mut VmSpec,
) -> Result<(), SpecError> {
    let text = || node.text().unwrap_or("").trim().to_string();
    let once = |slot: &Option<String>| {
        if slot.is_some() {
            Err(SpecError::at(doc, node, format!("<{tag}> is given twice")))
        } else {
            Ok(())
        }
    };
    match tag {
        "kernel" => {
            once(&vm.kernel)?;
            vm.kernel = Some(text());
        }
        "initrd" => {
            once(&vm.initrd)?;
            vm.initrd = Some(text());
        }
        "cmdline" => {
            once(&vm.cmdline)?;
            vm.cmdline = Some(text());
        }
        "accel" => vm.accel = VmAccel::parse(&text()).map_err(|e| SpecError::at(doc, node, e))?,
        _ => {
            let path = node
                .attribute("path")
                .ok_or_else(|| SpecError::at(doc, node, "<share> needs path=\"/host/dir\""))?;
            for attr in node.attributes() {
                if !matches!(attr.name(), "path" | "writable") {
                    return Err(SpecError::at(
                        doc,
                        node,
                        format!("unknown attribute {}= on <share>", attr.name()),
                    ));
                }
            }
            vm.shares.push(VmShare {
                path: path.to_string(),
                writable: bool_attr(doc, node, "writable")?.unwrap_or(false),
            });
        }
    }
    vm.validate().map_err(|e| SpecError::at(doc, node, e))
}

fn parse_cpus(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    cpus: &mut CpuRequest,
) -> Result<(), SpecError> {
    cpus.numa = numa_attr(doc, node)?.or(cpus.numa);
    for child in node.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "cores" => {
                let text = child.text().unwrap_or("");
                let n: u32 = num(doc, child, "<cores>", text)?;
                if n > 4096 {
                    return Err(SpecError::at(
                        doc,
                        child,
                        format!("{n} cores is more than any node has"),
                    ));
                }
                cpus.count += n;
                cpus.numa = numa_attr(doc, child)?.or(cpus.numa);
            }
            "core" => cpus.ids.push(id_of(doc, child)?),
            other => {
                return Err(SpecError::at(
                    doc,
                    child,
                    format!("unknown element <{other}> in <cpus>: expected <cores> or <core>"),
                ))
            }
        }
    }
    Ok(())
}

/// A memory size in MiB as people type it on command lines and in
/// configuration files: "512", "512M", "1G", "2GiB", "1T" (no unit: MiB).
/// The shell's `--memory` and the daemon's `--memory`, `--host-memory`
/// sizes both read it.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let mult = match unit.trim() {
        "" | "M" | "m" | "MB" | "MiB" => 1,
        "G" | "g" | "GB" | "GiB" => 1024,
        "T" | "t" | "TB" | "TiB" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use M or G, e.g. 512 or 1G)"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512 or 1G)"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("the size must be more than 0".into()),
        Some(mib) => Ok(mib),
        None => Err(format!("{s:?} is too large")),
    }
}

fn xml_size_mib(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    v: &str,
) -> Result<u64, SpecError> {
    let v = v.trim();
    let (digits, mult) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (v, 1u64),
        Some((i, _)) => {
            let mult = match &v[i..] {
                "M" | "MB" | "MiB" | "m" => 1,
                "G" | "GB" | "GiB" | "g" => 1024,
                unit => {
                    return Err(SpecError::at(
                        doc,
                        node,
                        format!(
                        "size=\"{v}\": unknown unit {unit:?} (sizes are MiB, or use a G suffix)"
                    ),
                    ))
                }
            };
            (&v[..i], mult)
        }
    };
    let n: u64 = num(doc, node, "size", digits)?;
    n.checked_mul(mult)
        .filter(|m| *m <= (1 << 30))
        .ok_or_else(|| SpecError::at(doc, node, format!("size=\"{v}\" is too large")))
}

fn parse_memory(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    mem: &mut MemRequest,
) -> Result<(), SpecError> {
    if let Some(size) = node.attribute("size") {
        mem.size_mib += xml_size_mib(doc, node, size)?;
    }
    mem.numa = numa_attr(doc, node)?.or(mem.numa);
    for child in node.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "block" => mem.blocks.push(id_of(doc, child)?),
            other => {
                return Err(SpecError::at(
                    doc,
                    child,
                    format!("unknown element <{other}> in <memory>: expected <block>"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_issue_example() {
        let spec = EnclaveSpec::from_xml(
            r#"<native name="sim"><cpus><cores>1</cores></cpus><memory size="512" numa="-1"/></native>"#,
        )
        .unwrap();
        assert_eq!(spec.name, "sim");
        assert_eq!(spec.kind, EnclaveKind::Native);
        assert_eq!(spec.cpus.count, 1);
        assert_eq!(spec.memory.size_mib, 512);
        assert_eq!(spec.memory.numa, None);
        assert!(!spec.shared);
    }

    #[test]
    fn explicit_ids_and_blocks() {
        let spec = EnclaveSpec::from_xml(
            "<native name=\"a\" shared=\"true\">\n<cpus><core id=\"1\"/><core>3</core></cpus>\n<memory><block id=\"7\"/><block>8</block></memory>\n</native>",
        )
        .unwrap();
        assert_eq!(spec.cpus.ids, vec![1, 3]);
        assert_eq!(spec.memory.blocks, vec![7, 8]);
        assert!(spec.shared);
    }

    #[test]
    fn errors_name_the_line() {
        let err =
            EnclaveSpec::from_xml("<native name=\"a\">\n<cpus>\n<cores>x</cores></cpus></native>")
                .unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = EnclaveSpec::from_xml("<native name=\"a\">\n<cpus>\n</native>").unwrap_err();
        assert!(
            err.to_string().starts_with("line 3: malformed XML"),
            "{err}"
        );
        let err = EnclaveSpec::from_xml("<pisces name=\"a\"/>").unwrap_err();
        assert!(
            err.to_string().contains("unknown enclave kind <pisces>"),
            "{err}"
        );
    }

    #[test]
    fn refuses_empty_and_bad_names() {
        assert!(
            EnclaveSpec::from_xml("<native name=\"a\"><memory size=\"1\"/></native>")
                .unwrap_err()
                .message
                .contains("at least one core")
        );
        assert!(EnclaveSpec::from_xml(
            "<native name=\"a b\"><cpus><cores>1</cores></cpus><memory size=\"1\"/></native>"
        )
        .is_err());
        assert!(EnclaveSpec::from_xml(
            "<native name=\"12\"><cpus><cores>1</cores></cpus><memory size=\"1\"/></native>"
        )
        .is_err());
    }

    #[test]
    fn refuses_option_like_names_and_loose_booleans() {
        for bad in ["-rf", ".", "..", ".hidden", "-"] {
            let err = EnclaveSpec::from_xml(&format!(
                "<native name=\"{bad}\"><cpus><cores>1</cores></cpus><memory size=\"1\"/></native>"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("may not start"), "{bad}: {err}");
        }
        for bad in ["1", "yes", "no", "0", "True"] {
            let err = EnclaveSpec::from_xml(&format!(
                "<native name=\"a\" shared=\"{bad}\"><cpus><cores>1</cores></cpus><memory size=\"1\"/></native>"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("is not a boolean"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_an_lwk_enclave() {
        let spec = EnclaveSpec::from_xml(
            r#"<lwk name="sim"><cpus><cores>1</cores></cpus><memory size="1024"/></lwk>"#,
        )
        .unwrap();
        assert_eq!(spec.kind, EnclaveKind::Lwk);
        assert_eq!((spec.cpus.count, spec.memory.size_mib), (1, 1024));
        assert!(!spec.shared && !spec.host_ipc);
    }

    #[test]
    fn refuses_what_an_lwk_enclave_cannot_be() {
        let err = EnclaveSpec::from_xml(
            "<lwk name=\"sim\" shared=\"true\">\n<cpus><cores>1</cores></cpus><memory size=\"1024\"/></lwk>",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(
            err.message.contains("an lwk enclave cannot be shared"),
            "{err}"
        );
        let err = EnclaveSpec::from_xml(
            r#"<lwk name="sim" ipc="host"><cpus><cores>1</cores></cpus><memory size="1024"/></lwk>"#,
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("ipc=\"host\" does not apply to an lwk enclave"),
            "{err}"
        );
        // The same rules hold for a spec that did not come from XML.
        let mut spec = EnclaveSpec::from_xml(
            r#"<lwk name="sim"><cpus><cores>1</cores></cpus><memory size="1024"/></lwk>"#,
        )
        .unwrap();
        spec.shared = true;
        assert!(spec.validate().is_err());
        // Unknown kinds list lwk among the creatable ones.
        let err = EnclaveSpec::from_xml("<kitten name=\"a\"/>").unwrap_err();
        assert!(err.message.contains("expected <native>, <lwk>"), "{err}");
    }

    #[test]
    fn refuses_entities() {
        let doc = "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><native name=\"&a;\"/>";
        assert!(EnclaveSpec::from_xml(doc).is_err());
    }

    #[test]
    fn sizes_with_units() {
        let spec = EnclaveSpec::from_xml(
            "<native name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"2G\"/></native>",
        )
        .unwrap();
        assert_eq!(spec.memory.size_mib, 2048);
    }

    proptest! {
        #[test]
        fn xml_parser_never_panics(text in "\\PC{0,300}") {
            let _ = EnclaveSpec::from_xml(&text);
        }

        #[test]
        fn xml_parser_never_panics_on_near_valid(count in "\\PC{0,6}", size in "\\PC{0,6}", name in "\\PC{0,10}") {
            let doc = format!("<native name=\"{name}\"><cpus><cores>{count}</cores></cpus><memory size=\"{size}\"/></native>");
            let _ = EnclaveSpec::from_xml(&doc);
        }
    }
}

#[cfg(test)]
mod vm_tests {
    use super::*;

    #[test]
    fn a_vm_spec_reads_its_kernel_shares_and_accelerator() {
        let spec = EnclaveSpec::from_xml(
            r#"<vm name="ana">
                 <cpus><cores>1</cores></cpus>
                 <memory size="1G"/>
                 <kernel>/boot/vmlinuz</kernel>
                 <cmdline>mitigations=off</cmdline>
                 <accel>tcg</accel>
                 <share path="/home/u/run" writable="true"/>
                 <share path="/data"/>
               </vm>"#,
        )
        .unwrap();
        assert_eq!(spec.kind, EnclaveKind::Vm);
        let vm = spec.vm.unwrap();
        assert_eq!(vm.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(vm.initrd, None);
        assert_eq!(vm.cmdline.as_deref(), Some("mitigations=off"));
        assert_eq!(vm.accel, VmAccel::Tcg);
        assert_eq!(
            vm.shares,
            vec![
                VmShare {
                    path: "/home/u/run".into(),
                    writable: true
                },
                VmShare {
                    path: "/data".into(),
                    writable: false
                }
            ]
        );
        // Defaults: no settings at all.
        let plain = EnclaveSpec::from_xml(
            r#"<vm name="a"><cpus><cores>1</cores></cpus><memory size="512"/></vm>"#,
        )
        .unwrap();
        assert_eq!(plain.vm, None);
    }

    #[test]
    fn bad_vm_specs_name_the_problem_and_the_line() {
        let err = |xml: &str| EnclaveSpec::from_xml(xml).unwrap_err().to_string();
        let e = err(
            "<vm name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/>\n<accel>xen</accel></vm>",
        );
        assert!(e.starts_with("line 2: unknown accelerator \"xen\""), "{e}");
        let e = err("<vm name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><kernel>vmlinuz</kernel></vm>");
        assert!(e.contains("<kernel> must be an absolute path"), "{e}");
        let e = err("<vm name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><share path=\"/usr/lib\"/></vm>");
        assert!(e.contains("would cover the guest's own files"), "{e}");
        let e = err("<vm name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><share path=\"/d\"/><share path=\"/d/\"/></vm>");
        assert!(e.contains("listed twice"), "{e}");
        let e =
            err("<vm name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><share/></vm>");
        assert!(e.contains("<share> needs path="), "{e}");
        let e = err("<native name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/><kernel>/k</kernel></native>");
        assert!(e.contains("unknown element <kernel> in <native>"), "{e}");
        let e = err("<vm name=\"a\" shared=\"true\"><cpus><cores>1</cores></cpus><memory size=\"512\"/></vm>");
        assert!(e.contains("a vm enclave cannot be shared"), "{e}");
        // Settings for a VM on another kind's spec (the JSON form).
        let mut spec = EnclaveSpec::from_xml(
            "<native name=\"a\"><cpus><cores>1</cores></cpus><memory size=\"512\"/></native>",
        )
        .unwrap();
        spec.vm = Some(VmSpec::default());
        assert!(spec
            .validate()
            .unwrap_err()
            .message
            .contains("are for vm enclaves"));
    }
}
