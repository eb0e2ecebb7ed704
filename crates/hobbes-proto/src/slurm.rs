//! Slurm: the tags that tie enclaves and apps to Slurm job steps and tasks,
//! and the `--enclave=SPEC` grammar of the SPANK plugin (`hobbes-spank`,
//! docs/slurm.md).
//!
//! ```text
//! spec  := "" | item ("," item)*
//! item  := kind | "kind=" kind | "cores=" N | "mem=" size
//!        | "shared" | "exclusive" | "host-ipc"
//! kind  := "native" | "lwk" | "vm"
//! size  := N [unit]        unit: K, M, G, T (powers of 1024; "KiB", "MB", ... too);
//!                          no unit: MiB
//! ```
//!
//! Every item is optional and may appear once (`shared` and `exclusive`
//! exclude each other). What is left out takes the step's values on each
//! node: cores = the step's tasks on that node, memory = the step's (or the
//! job's) memory per node, else the plugin's default.

use serde::{Deserialize, Serialize};

use crate::model::EnclaveKind;

/// The Slurm job step an enclave was made for, on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmStep {
    /// `SLURM_JOB_ID`.
    pub job_id: u32,
    /// `SLURM_STEP_ID`.
    pub step_id: u32,
    /// The component of a heterogeneous step (`srun A : B`), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub het_component: Option<u32>,
    /// The Slurm node name (`SLURMD_NODENAME`).
    pub node: String,
}

impl SlurmStep {
    /// The enclave name the plugin gives the step's enclave on a node:
    /// `slurm-<job>.<step>`, with `-<component>` for a heterogeneous step.
    pub fn enclave_name(&self) -> String {
        match self.het_component {
            Some(c) => format!("slurm-{}.{}-{c}", self.job_id, self.step_id),
            None => format!("slurm-{}.{}", self.job_id, self.step_id),
        }
    }

    /// The step's name in Slurm's cgroup paths (`step_<name>`): its number,
    /// or `batch`, `extern` or `interactive` for Slurm's special steps.
    pub fn cgroup_name(&self) -> String {
        match self.step_id {
            0xffff_fffb => "batch".into(),
            0xffff_fffc => "extern".into(),
            0xffff_fffa => "interactive".into(),
            n => n.to_string(),
        }
    }
}

impl std::fmt::Display for SlurmStep {
    /// Slurm's own notation: `job.step` or `job.step+component`, then the node.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.job_id, self.step_id)?;
        if let Some(c) = self.het_component {
            write!(f, "+{c}")?;
        }
        write!(f, "@{}", self.node)
    }
}

/// The Slurm task an app is (a rank that joined its step's enclave).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmTask {
    /// `SLURM_JOB_ID`.
    pub job_id: u32,
    /// `SLURM_STEP_ID`.
    pub step_id: u32,
    /// The component of a heterogeneous step, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub het_component: Option<u32>,
    /// Global task id (`SLURM_PROCID`, the MPI rank).
    pub task_id: u32,
    /// Task id on this node (`SLURM_LOCALID`).
    pub local_id: u32,
}

impl std::fmt::Display for SlurmTask {
    /// `job.step[+component] task T (local L)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.job_id, self.step_id)?;
        if let Some(c) = self.het_component {
            write!(f, "+{c}")?;
        }
        write!(f, " task {} (local {})", self.task_id, self.local_id)
    }
}

/// What `--enclave=SPEC` asks for; `None` fields take the step's values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnclaveOption {
    /// The kind named; `None`: native.
    pub kind: Option<EnclaveKind>,
    /// Cores per node.
    pub cores: Option<u32>,
    /// Memory per node in MiB.
    pub mem_mib: Option<u64>,
    /// `shared` (`Some(true)`) or `exclusive` (`Some(false)`); `None`: exclusive.
    pub shared: Option<bool>,
    /// `host-ipc`: stay in the host's IPC namespace.
    pub host_ipc: bool,
}

/// Most cores one `--enclave` may ask for per node.
pub const MAX_CORES: u32 = 1 << 16;
/// Most memory one `--enclave` may ask for per node: 1 PiB, in MiB.
pub const MAX_MEM_MIB: u64 = 1 << 30;

impl EnclaveOption {
    /// Parse a SPEC (the module's grammar). `None` or an empty string: every
    /// default. The error says which item is wrong and what is expected.
    pub fn parse(spec: Option<&str>) -> Result<EnclaveOption, String> {
        let mut opt = EnclaveOption::default();
        let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(opt);
        };
        for item in spec.split(',').map(str::trim) {
            opt.item(item)?;
        }
        Ok(opt)
    }

    fn item(&mut self, item: &str) -> Result<(), String> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (item.to_ascii_lowercase(), None),
        };
        let once = |taken: bool| {
            if taken {
                Err(format!("--enclave: {key:?} is given twice"))
            } else {
                Ok(())
            }
        };
        match (key.as_str(), value) {
            ("", None) => Err("--enclave: an empty item (two commas in a row?)".into()),
            ("native" | "lwk" | "vm", None) => {
                once(self.kind.is_some())?;
                self.kind = Some(parse_kind(&key)?);
                Ok(())
            }
            ("kind", Some(v)) => {
                once(self.kind.is_some())?;
                self.kind = Some(parse_kind(v)?);
                Ok(())
            }
            ("cores" | "cpus", Some(v)) => {
                once(self.cores.is_some())?;
                let n: u32 = v.parse().map_err(|_| {
                    format!("--enclave: cores={v:?} is not a number of cores (e.g. cores=2)")
                })?;
                if n == 0 || n > MAX_CORES {
                    return Err(format!(
                        "--enclave: cores={n}: give 1 to {MAX_CORES} cores per node"
                    ));
                }
                self.cores = Some(n);
                Ok(())
            }
            ("mem" | "memory", Some(v)) => {
                once(self.mem_mib.is_some())?;
                self.mem_mib = Some(parse_mib(v)?);
                Ok(())
            }
            ("shared" | "exclusive", None) => {
                once(self.shared.is_some())?;
                self.shared = Some(key == "shared");
                Ok(())
            }
            ("host-ipc" | "host_ipc", None) => {
                once(self.host_ipc)?;
                self.host_ipc = true;
                Ok(())
            }
            _ => Err(format!(
                "--enclave: unknown item {item:?}: expected native, cores=N, mem=SIZE, shared, exclusive or host-ipc (e.g. --enclave=cores=2,mem=1G)"
            )),
        }
    }

    /// The kind to create (native unless named).
    pub fn kind(&self) -> EnclaveKind {
        self.kind.unwrap_or(EnclaveKind::Native)
    }

    /// Refuse what a Slurm task cannot join: only a native enclave's
    /// processes are Linux processes of this node; an lwk or vm enclave runs
    /// its programs in a guest, which a task forked by slurmstepd cannot enter.
    pub fn check_joinable(&self) -> Result<(), String> {
        match self.kind() {
            EnclaveKind::Native => Ok(()),
            kind => Err(format!(
                "--enclave={kind}: Slurm tasks can only join native enclaves; an {kind} enclave runs its programs in a guest, which a task started by slurmstepd cannot enter (use --enclave=native, or hobbes launch-app for {kind} enclaves)"
            )),
        }
    }
}

fn parse_kind(s: &str) -> Result<EnclaveKind, String> {
    match s.to_ascii_lowercase().as_str() {
        "native" => Ok(EnclaveKind::Native),
        "lwk" => Ok(EnclaveKind::Lwk),
        "vm" => Ok(EnclaveKind::Vm),
        other => Err(format!(
            "--enclave: unknown kind {other:?}: expected native (lwk and vm cannot be joined by Slurm tasks)"
        )),
    }
}

/// A size in MiB: a number with an optional K/M/G/T unit (powers of 1024;
/// "KiB", "MB" and lower case too); no unit is MiB. At least 1 MiB.
pub fn parse_mib(v: &str) -> Result<u64, String> {
    let bad = || format!("--enclave: mem={v:?} is not a size (e.g. mem=512M, mem=2G)");
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let kib = match unit {
        "k" => n,
        "" | "m" => n.checked_mul(1 << 10).ok_or_else(bad)?,
        "g" => n.checked_mul(1 << 20).ok_or_else(bad)?,
        "t" => n.checked_mul(1 << 30).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let mib = kib / 1024;
    if mib == 0 || mib > MAX_MEM_MIB {
        return Err(format!(
            "--enclave: mem={v}: give 1 MiB to {} GiB per node",
            MAX_MEM_MIB >> 10
        ));
    }
    Ok(mib)
}

/// The environment variable that splits a step's tasks into applications,
/// one enclave per application per node (Remora's `srun --multi-prog`
/// step): [`EnclaveGroups`].
pub const GROUPS_ENV: &str = "HOBBES_ENCLAVE_GROUPS";
/// Most applications one step may name in [`GROUPS_ENV`].
pub const MAX_GROUPS: usize = 256;
/// Longest application name in [`GROUPS_ENV`]: the enclave's name,
/// `slurm-<job>.<step>[-<component>]-<name>`, stays within
/// [`crate::spec::MAX_NAME_LEN`] whatever the ids.
pub const MAX_GROUP_NAME_LEN: usize = 24;

/// One application of a step: a name and its global task ids (Slurm's
/// `SLURM_PROCID`s), `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveGroup {
    /// The application's name: `[A-Za-z0-9._-]`, 1 to
    /// [`MAX_GROUP_NAME_LEN`] characters, not starting with `-` or `.`.
    pub name: String,
    /// Its first global task id.
    pub first: u32,
    /// Its last global task id (`>= first`).
    pub last: u32,
}

impl EnclaveGroup {
    /// Is global task id `task` one of this application's?
    pub fn contains(&self, task: u32) -> bool {
        (self.first..=self.last).contains(&task)
    }
}

/// `HOBBES_ENCLAVE_GROUPS`: a step's tasks split into applications, each
/// with an enclave of its own on every node where it has tasks.
///
/// ```text
/// groups := group ("," group)*
/// group  := name "=" first ["-" last]      global task ids, first <= last
/// name   := [A-Za-z0-9._-]{1,24}           not starting with '-' or '.'
/// ```
///
/// Names are unique and ranges disjoint (in any order; gaps allowed: a task
/// in no range fails). Spaces around items are ignored. E.g.
/// `sim=0-3,ana=4-5`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnclaveGroups {
    /// The applications, in the order given.
    pub groups: Vec<EnclaveGroup>,
}

impl EnclaveGroups {
    /// Parse the variable's value (the grammar above). An empty value (or
    /// only spaces) is an error: unset the variable for one enclave per
    /// step. The error names the variable and the item.
    pub fn parse(value: &str) -> Result<EnclaveGroups, String> {
        let bad = |why: String| format!("{GROUPS_ENV}={value:?}: {why}");
        if value.trim().is_empty() {
            return Err(bad(
                "empty: give name=FIRST-LAST[,name=FIRST-LAST...] (global task ids), or unset it for one enclave per step".into(),
            ));
        }
        let mut groups: Vec<EnclaveGroup> = Vec::new();
        for item in value.split(',').map(str::trim) {
            if groups.len() == MAX_GROUPS {
                return Err(bad(format!("more than {MAX_GROUPS} applications")));
            }
            let g = parse_group(item).map_err(&bad)?;
            if let Some(o) = groups.iter().find(|o| o.name == g.name) {
                return Err(bad(format!("application {:?} is named twice", o.name)));
            }
            if let Some(o) = groups
                .iter()
                .find(|o| o.first <= g.last && g.first <= o.last)
            {
                return Err(bad(format!(
                    "the tasks of {:?} ({}-{}) and {:?} ({}-{}) overlap: each task belongs to one application",
                    o.name, o.first, o.last, g.name, g.first, g.last
                )));
            }
            groups.push(g);
        }
        Ok(EnclaveGroups { groups })
    }

    /// The application global task id `task` belongs to.
    pub fn group_of(&self, task: u32) -> Option<&EnclaveGroup> {
        self.groups.iter().find(|g| g.contains(task))
    }
}

impl std::fmt::Display for EnclaveGroups {
    /// The variable's value, as [`EnclaveGroups::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}-{}", g.name, g.first, g.last)?;
        }
        Ok(())
    }
}

fn parse_group(item: &str) -> Result<EnclaveGroup, String> {
    let Some((name, range)) = item.split_once('=') else {
        return Err(format!("{item:?} is not name=FIRST-LAST (e.g. sim=0-3)"));
    };
    let (name, range) = (name.trim(), range.trim());
    if name.is_empty() || name.len() > MAX_GROUP_NAME_LEN {
        return Err(format!(
            "{item:?}: an application name has 1 to {MAX_GROUP_NAME_LEN} characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || name.starts_with(['-', '.'])
    {
        return Err(format!(
            "{item:?}: an application name is letters, digits, '.', '_' and '-' (not first)"
        ));
    }
    let task = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{item:?}: {s:?} is not a task id (FIRST-LAST, e.g. {name}=0-3)"
            ));
        }
        s.parse::<u32>()
            .map_err(|_| format!("{item:?}: task id {s} is too large"))
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => (task(a)?, task(b)?),
        None => {
            let t = task(range)?;
            (t, t)
        }
    };
    if first > last {
        return Err(format!(
            "{item:?}: the first task ({first}) comes after the last ({last})"
        ));
    }
    Ok(EnclaveGroup {
        name: name.to_string(),
        first,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_bare_spec_take_every_default() {
        assert_eq!(EnclaveOption::parse(None), Ok(EnclaveOption::default()));
        assert_eq!(EnclaveOption::parse(Some("")), Ok(EnclaveOption::default()));
        assert_eq!(
            EnclaveOption::parse(Some("  ")),
            Ok(EnclaveOption::default())
        );
    }

    #[test]
    fn full_spec_parses() {
        let o = EnclaveOption::parse(Some("native,cores=2,mem=1G,shared,host-ipc")).unwrap();
        assert_eq!(
            o,
            EnclaveOption {
                kind: Some(EnclaveKind::Native),
                cores: Some(2),
                mem_mib: Some(1024),
                shared: Some(true),
                host_ipc: true,
            }
        );
        assert!(o.check_joinable().is_ok());
    }

    #[test]
    fn items_in_any_order_and_case() {
        let o = EnclaveOption::parse(Some("MEM=512 , Exclusive,kind=native,CORES=1")).unwrap();
        assert_eq!(o.mem_mib, Some(512));
        assert_eq!(o.shared, Some(false));
        assert_eq!(o.cores, Some(1));
        assert_eq!(o.kind(), EnclaveKind::Native);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("512MiB"), Ok(512));
        assert_eq!(parse_mib("2g"), Ok(2048));
        assert_eq!(parse_mib("2GB"), Ok(2048));
        assert_eq!(parse_mib("1T"), Ok(1 << 20));
        assert_eq!(parse_mib("2048K"), Ok(2));
        assert!(parse_mib("1K").is_err());
        assert!(parse_mib("0").is_err());
        assert!(parse_mib("").is_err());
        assert!(parse_mib("G").is_err());
        assert!(parse_mib("1X").is_err());
        assert!(parse_mib("-1").is_err());
        assert!(parse_mib("99999999999999999999999").is_err());
        assert!(parse_mib("9999999999999999T").is_err());
    }

    #[test]
    fn lwk_and_vm_parse_but_cannot_be_joined() {
        for spec in ["lwk", "vm,cores=1", "kind=vm"] {
            let o = EnclaveOption::parse(Some(spec)).unwrap();
            let e = o.check_joinable().unwrap_err();
            assert!(e.contains("only join native enclaves"), "{e}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("cores=0", "1 to"),
            ("cores=two", "not a number"),
            ("mem=lots", "not a size"),
            ("shared,exclusive", "twice"),
            ("cores=1,cores=2", "twice"),
            ("native,lwk", "twice"),
            ("kind=kitten", "unknown kind"),
            ("fast", "unknown item"),
            ("cores=1,,mem=1G", "empty item"),
            ("shared=yes", "unknown item"),
        ] {
            let e = EnclaveOption::parse(Some(spec)).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn enclave_names_follow_the_step() {
        let mut s = SlurmStep {
            job_id: 12,
            step_id: 0,
            het_component: None,
            node: "n1".into(),
        };
        assert_eq!(s.enclave_name(), "slurm-12.0");
        assert_eq!(s.to_string(), "12.0@n1");
        s.het_component = Some(1);
        assert_eq!(s.enclave_name(), "slurm-12.0-1");
        assert_eq!(s.to_string(), "12.0+1@n1");
        assert!(crate::spec::validate_name(&s.enclave_name()).is_ok());
    }

    #[test]
    fn groups_parse() {
        let g = EnclaveGroups::parse("sim=0-3, ana=4-5,x.y_z-1=9").unwrap();
        assert_eq!(g.groups.len(), 3);
        assert_eq!(
            g.groups[0],
            EnclaveGroup {
                name: "sim".into(),
                first: 0,
                last: 3
            }
        );
        assert_eq!((g.groups[2].first, g.groups[2].last), (9, 9));
        assert_eq!(g.group_of(4).map(|g| g.name.as_str()), Some("ana"));
        assert_eq!(g.group_of(3).map(|g| g.name.as_str()), Some("sim"));
        assert_eq!(g.group_of(6), None);
        assert_eq!(g.to_string(), "sim=0-3,ana=4-5,x.y_z-1=9-9");
        // Out of order is fine.
        assert!(EnclaveGroups::parse("b=2-3,a=0-1").is_ok());
    }

    #[test]
    fn bad_groups_name_the_variable_and_say_what_is_wrong() {
        for (value, says) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a", "not name=FIRST-LAST"),
            ("=0-1", "1 to 24"),
            ("a=", "not a task id"),
            ("a=x", "not a task id"),
            ("a=1-", "not a task id"),
            ("a=-1", "not a task id"),
            ("a=+1", "not a task id"),
            ("a=3-1", "comes after"),
            ("a=0-1,a=2-3", "named twice"),
            ("a=0-2,b=2-3", "overlap"),
            ("b=5-9,a=0-6", "overlap"),
            ("a=0-1,,b=2", "not name=FIRST-LAST"),
            ("a b=0", "letters, digits"),
            ("-a=0", "letters, digits"),
            (".a=0", "letters, digits"),
            ("a/b=0", "letters, digits"),
            ("a=99999999999", "too large"),
            ("abcdefghijklmnopqrstuvwxy=0", "1 to 24"),
        ] {
            let e = EnclaveGroups::parse(value).unwrap_err();
            assert!(e.starts_with("HOBBES_ENCLAVE_GROUPS="), "{value}: {e}");
            assert!(e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn group_enclave_names_are_valid() {
        let step = SlurmStep {
            job_id: u32::MAX,
            step_id: u32::MAX,
            het_component: Some(u32::MAX),
            node: "n1".into(),
        };
        let name = format!("{}-{}", step.enclave_name(), "a".repeat(MAX_GROUP_NAME_LEN));
        assert!(crate::spec::validate_name(&name).is_ok(), "{name}");
    }

    #[test]
    /// The requests of fuzz/seeds/frame_decoder/{create_owned,join_owned,create_for_step}.json.
    fn create_and_join_carry_the_owner_and_default_without_it() {
        use crate::msg::{Owner, Request};
        let create = r#"{"op":"create_enclave","spec":{"name":"slurm-12.0-sim","kind":"native","shared":true,"host_ipc":false,"cpus":{"count":2,"ids":[],"numa":null},"memory":{"size_mib":512,"blocks":[],"numa":null}},"slurm":{"job_id":12,"step_id":0,"node":"n1"},"bound_to_pid":4242,"owner":{"uid":1000,"gid":100}}"#;
        let Request::CreateEnclave { owner, slurm, .. } = serde_json::from_str(create).unwrap()
        else {
            panic!("not create_enclave")
        };
        assert_eq!(
            owner,
            Some(Owner {
                uid: 1000,
                gid: 100
            })
        );
        assert_eq!(slurm.unwrap().node, "n1");
        let join = r#"{"op":"join_enclave","enclave":{"name":"slurm-12.0-sim"},"pid":4711,"argv":["./sim"],"slurm":{"job_id":12,"step_id":0,"task_id":3,"local_id":1},"owner":{"uid":1000,"gid":100}}"#;
        let Request::JoinEnclave { owner, .. } = serde_json::from_str(join).unwrap() else {
            panic!("not join_enclave")
        };
        assert_eq!(
            owner,
            Some(Owner {
                uid: 1000,
                gid: 100
            })
        );
        // Older clients: no owner.
        let old = r#"{"op":"create_enclave","spec":{"name":"slurm-12.0","kind":"native","shared":false,"host_ipc":true,"cpus":{"count":2,"ids":[],"numa":null},"memory":{"size_mib":1024,"blocks":[],"numa":null}},"slurm":{"job_id":12,"step_id":0,"het_component":1,"node":"n1"},"bound_to_pid":4242}"#;
        let Request::CreateEnclave { owner, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not create_enclave")
        };
        assert_eq!(owner, None);
        // And none is written when there is none.
        let r = Request::JoinEnclave {
            enclave: crate::msg::EnclaveRef::Id(1),
            pid: 2,
            argv: vec![],
            slurm: None,
            owner: None,
            defer_cgroups: false,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("owner") && !text.contains("defer_cgroups"));
        // The fields the plugin adds for Slurm's own cgroups.
        let create = r#"{"op":"create_enclave","spec":{"name":"slurm-12.0","kind":"native","shared":false,"host_ipc":true,"cpus":{"count":1,"ids":[],"numa":null},"memory":{"size_mib":128,"blocks":[],"numa":null}},"step_cpus":[0,1]}"#;
        let Request::CreateEnclave { step_cpus, .. } = serde_json::from_str(create).unwrap() else {
            panic!("not create_enclave")
        };
        assert_eq!(step_cpus, Some(vec![0, 1]));
        let place: Request =
            serde_json::from_str(r#"{"op":"place_task","enclave":{"name":"slurm-12.0"},"pid":7}"#)
                .unwrap();
        assert_eq!(place.op(), "place_task");
    }

    proptest::proptest! {
        /// Whatever the string, parsing answers (never panics), and what
        /// parses obeys the limits.
        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            if let Ok(o) = EnclaveOption::parse(Some(&s)) {
                proptest::prop_assert!(o.cores.is_none_or(|c| (1..=MAX_CORES).contains(&c)));
                proptest::prop_assert!(o.mem_mib.is_none_or(|m| (1..=MAX_MEM_MIB).contains(&m)));
            }
        }

        /// Specs built from the grammar parse back to what was put in.
        #[test]
        fn grammar_round_trips(cores in proptest::option::of(1u32..512), mem in proptest::option::of(1u64..65536),
                               shared in proptest::option::of(proptest::bool::ANY), host_ipc in proptest::bool::ANY) {
            let mut items = vec!["native".to_string()];
            if let Some(c) = cores { items.push(format!("cores={c}")); }
            if let Some(m) = mem { items.push(format!("mem={m}M")); }
            if let Some(s) = shared { items.push(if s { "shared" } else { "exclusive" }.into()); }
            if host_ipc { items.push("host-ipc".into()); }
            let o = EnclaveOption::parse(Some(&items.join(","))).unwrap();
            proptest::prop_assert_eq!(o, EnclaveOption { kind: Some(EnclaveKind::Native), cores, mem_mib: mem, shared, host_ipc });
        }
        /// Whatever the value, parsing answers (never panics); what parses
        /// has valid, unique names and disjoint, ordered ranges.
        #[test]
        fn groups_parse_never_panics(s in "\\PC{0,64}") {
            if let Ok(g) = EnclaveGroups::parse(&s) {
                proptest::prop_assert!(!g.groups.is_empty());
                for (i, a) in g.groups.iter().enumerate() {
                    proptest::prop_assert!(a.first <= a.last);
                    let name = format!("slurm-1.0-{}", a.name);
                    proptest::prop_assert!(crate::spec::validate_name(&name).is_ok());
                    for b in &g.groups[i + 1..] {
                        proptest::prop_assert!(a.name != b.name);
                        proptest::prop_assert!(a.last < b.first || b.last < a.first);
                    }
                }
                // What parses prints back to the same groups.
                proptest::prop_assert_eq!(EnclaveGroups::parse(&g.to_string()), Ok(g));
            }
        }

        /// Consecutive applications built from the grammar parse back, and
        /// every task id finds its application.
        #[test]
        fn groups_round_trip(sizes in proptest::collection::vec(1u32..50, 1..8)) {
            let mut groups = Vec::new();
            let mut next = 0;
            for (i, n) in sizes.iter().enumerate() {
                groups.push(EnclaveGroup { name: format!("app{i}"), first: next, last: next + n - 1 });
                next += n;
            }
            let g = EnclaveGroups { groups };
            let parsed = EnclaveGroups::parse(&g.to_string()).unwrap();
            proptest::prop_assert_eq!(&parsed, &g);
            for t in 0..next {
                let owner = parsed.group_of(t).unwrap();
                proptest::prop_assert!(owner.contains(t));
            }
            proptest::prop_assert!(parsed.group_of(next).is_none());
        }
    }
}
