//! QEMU's command line for one VM enclave, and starting it.
//!
//! Every channel to QEMU is a descriptor the monitor made and QEMU inherits
//! (`-chardev socket,fd=N`): the QMP monitor, the serial console and the
//! guest agent's port are each one end of a socket pair, connected before
//! QEMU starts, so no byte the guest sends early is lost and nothing waits
//! for a socket file to appear.

use std::path::{Path, PathBuf};

/// The accelerator a VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's Tiny Code Generator: the guest's instructions translated.
    Tcg,
}

impl Accel {
    /// As QEMU and the isolation record spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// Parse `kvm` or `tcg`.
    pub fn parse(s: &str) -> Result<Accel, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: expected kvm or tcg"
            )),
        }
    }
}

/// The QEMU binary: `HOBBES_QEMU` or Debian's `qemu-system-x86_64`.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("HOBBES_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// Descriptor numbers the child sees its channels at (set up in `pre_exec`).
pub const QMP_FD: i32 = 3;
/// The serial console's descriptor in QEMU.
pub const CONSOLE_FD: i32 = 4;
/// The guest agent port's descriptor in QEMU.
pub const GUEST_FD: i32 = 5;

/// What one VM's QEMU runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// Shown in `ps` and QMP (`hobbes-<enclave name>`).
    pub name: String,
    /// The accelerator.
    pub accel: Accel,
    /// One vCPU per enclave core.
    pub vcpus: usize,
    /// Guest RAM, bytes (a multiple of 2 MiB).
    pub guest_bytes: u64,
    /// Bind guest RAM to these host NUMA nodes (none: no policy).
    pub numa_nodes: Vec<u32>,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// The serial console's log (QEMU appends to it).
    pub console_log: PathBuf,
    /// virtiofsd's vhost-user socket, when host files are shared.
    pub virtiofs_socket: Option<PathBuf>,
}

impl QemuConfig {
    /// QEMU's arguments.
    pub fn args(&self) -> Vec<String> {
        let mib = self.guest_bytes >> 20;
        let mut ram = format!("memory-backend-memfd,id=ram,size={mib}M,share=on");
        if !self.numa_nodes.is_empty() {
            // A list option is given as repeated keys.
            for node in &self.numa_nodes {
                ram.push_str(&format!(",host-nodes={node}"));
            }
            ram.push_str(",policy=bind");
        }
        let accel = match self.accel {
            // The translation cache: QEMU's default is 1 GiB on 64-bit hosts,
            // more than a small enclave's whole memory limit.
            Accel::Tcg => "tcg,tb-size=64".to_string(),
            Accel::Kvm => "kvm".to_string(),
        };
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", self.name),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            // A guest reset (its kernel panicked: panic=-1) ends QEMU.
            "-no-reboot".into(),
            "-machine".into(),
            "pc,memory-backend=ram".into(),
            "-accel".into(),
            accel,
            "-cpu".into(),
            match self.accel {
                Accel::Kvm => "host".into(),
                Accel::Tcg => "max".into(),
            },
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            format!("{mib}M"),
            "-object".into(),
            ram,
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-chardev".into(),
            format!("socket,id=qmp,fd={QMP_FD}"),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "socket,id=console,fd={CONSOLE_FD},logfile={},logappend=on",
                qemu_path(&self.console_log)
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=guest,fd={GUEST_FD}"),
            "-device".into(),
            format!(
                "virtserialport,chardev=guest,name={}",
                vm_guest_proto::PORT_NAME
            ),
        ];
        if let Some(sock) = &self.virtiofs_socket {
            args.extend([
                "-chardev".into(),
                format!("socket,id=fs,path={}", qemu_path(sock)),
                "-device".into(),
                format!(
                    "vhost-user-fs-pci,chardev=fs,tag={}",
                    vm_guest_proto::EXPORT_TAG
                ),
            ]);
        }
        args
    }
}

/// A path in a QEMU option value: commas are doubled (QEMU's escape).
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            name: "hobbes-ana".into(),
            accel: Accel::Tcg,
            vcpus: 2,
            guest_bytes: 832 << 20,
            numa_nodes: vec![0],
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            cmdline: "console=ttyS0 panic=-1 quiet".into(),
            console_log: "/state/enclaves/3/console.log".into(),
            virtiofs_socket: Some("/state/enclaves/3/virtiofs.sock".into()),
        }
    }

    fn after(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn guest_ram_is_a_shared_memfd_bound_to_the_enclaves_nodes() {
        let args = config().args();
        assert_eq!(
            after(&args, "-object"),
            vec!["memory-backend-memfd,id=ram,size=832M,share=on,host-nodes=0,policy=bind"]
        );
        assert_eq!(after(&args, "-machine"), vec!["pc,memory-backend=ram"]);
        assert_eq!(after(&args, "-m"), vec!["832M"]);
        assert_eq!(after(&args, "-smp"), vec!["2"]);
        assert_eq!(after(&args, "-accel"), vec!["tcg,tb-size=64"]);
        assert!(args.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn every_channel_is_an_inherited_descriptor() {
        let args = config().args();
        let chardevs = after(&args, "-chardev");
        assert!(chardevs.contains(&"socket,id=qmp,fd=3".to_string()));
        assert!(chardevs.contains(&"socket,id=guest,fd=5".to_string()));
        assert!(chardevs.contains(
            &"socket,id=console,fd=4,logfile=/state/enclaves/3/console.log,logappend=on"
                .to_string()
        ));
        assert!(after(&args, "-device")
            .contains(&"virtserialport,chardev=guest,name=org.hobbes.control".to_string()));
        assert!(after(&args, "-device")
            .contains(&"vhost-user-fs-pci,chardev=fs,tag=hobbes".to_string()));
        let mut no_files = config();
        no_files.virtiofs_socket = None;
        assert!(!no_files.args().iter().any(|a| a.contains("vhost-user-fs")));
    }

    #[test]
    fn kvm_runs_the_host_cpu_model() {
        let mut c = config();
        c.accel = Accel::Kvm;
        let args = c.args();
        assert_eq!(after(&args, "-accel"), vec!["kvm"]);
        assert_eq!(after(&args, "-cpu"), vec!["host"]);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }
}
