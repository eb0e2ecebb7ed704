//! Remora compositions: which MPI applications run, how many processes each,
//! in which enclaves, and the communicator names — the seeds' XML.
//!
//! ```xml
//! <composition name="insitu" mpiComm="universe">
//!   <enclave name="sim" cores="1" memory="512">        <!-- created if absent -->
//!     <app name="simulation" np="2" mpiComm="simulation">
//!       <exe>./sim</exe> <arg>--steps</arg> <arg>100</arg>
//!       <env name="OMP_NUM_THREADS" value="1"/>
//!     </app>
//!     <enclave name="ana" shared="true">              <!-- nesting: the seeds' topology -->
//!       <app name="analysis" np="1" mpiComm="analysis"><exe>./ana</exe></app>
//!     </enclave>
//!   </enclave>
//! </composition>
//! ```
//!
//! Applications get global ranks in document order, contiguous per
//! application; an application's index is its MPI appnum. The schema is in
//! docs/remora.md.

use serde::{Deserialize, Serialize};

/// Most processes one composition may start.
pub const MAX_RANKS: u32 = 4096;

/// A parsed `<composition>`: the enclaves it needs and the applications
/// that make up one MPI job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Composition {
    /// Job name (`name=`, default `composition`).
    pub name: String,
    /// Name of the universe communicator (informational: `MPI_COMM_UNIVERSE`).
    pub universe: String,
    /// Every `<enclave>`, in document order (nested ones after their parent).
    pub enclaves: Vec<CompEnclave>,
    /// Every `<app>`, in document order: their index is their appnum.
    pub apps: Vec<CompApp>,
}

/// An enclave the composition uses: reused if it exists, else created so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompEnclave {
    /// Enclave name (the enclave-name rules apply), unique in the composition.
    pub name: String,
    /// Parent in the XML (the seeds' topology); our native enclaves are all
    /// children of the host, so this is recorded, not enforced.
    pub parent: Option<String>,
    /// Cores to create it with (`cores=`, default 1); unused when it exists.
    pub cores: u32,
    /// Memory to create it with, MiB (`memory=`, default 256); unused when it exists.
    pub memory_mib: u64,
    /// Create it shared: pinned to host cores without owning them (`shared=`).
    pub shared: bool,
    /// Created in the host's IPC namespace (the default for compositions:
    /// MPICH's shared memory between applications needs one IPC namespace).
    pub host_ipc: bool,
}

/// One MPI application of a composition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompApp {
    /// Application name (`name=`), unique in the composition.
    pub name: String,
    /// Name of the enclave it runs in (the `<enclave>` it sits in).
    pub enclave: String,
    /// Number of processes (`np=` or `num=`, default 1), 1 to [`MAX_RANKS`].
    pub np: u32,
    /// The application's communicator name (its `MPI_COMM_WORLD`).
    pub comm: String,
    /// `<exe>` then each `<arg>`.
    pub argv: Vec<String>,
    /// `<env name= value=>` pairs, in document order.
    pub env: Vec<(String, String)>,
    /// `<cwd>`, if given.
    pub cwd: Option<String>,
    /// `mpi="mpich|openmpi"`: the MPI its program is built against, when the
    /// launcher should not find out from the program itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<crate::msg::MpiFlavor>,
    /// Across the nodes of a Slurm allocation: how many nodes its ranks
    /// spread over (`nodes=`, srun's `-N`); `None`: the launcher decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
    /// Across nodes: ranks on each of its nodes (`ranks_per_node=`, srun's
    /// `--ntasks-per-node`); the last node may hold fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks_per_node: Option<u32>,
}

impl CompApp {
    /// Checks its placement (`nodes`, `ranks_per_node`) against `np`: each at
    /// least 1, room for every rank, and no node left without one.
    pub fn check_placement(&self) -> Result<(), String> {
        let name = &self.name;
        match (self.nodes, self.ranks_per_node) {
            (Some(0), _) => Err(format!("app {name:?} has nodes=0")),
            (_, Some(0)) => Err(format!("app {name:?} has ranks_per_node=0")),
            (Some(n), _) if n > self.np => Err(format!(
                "app {name:?} asks for {n} nodes for {} processes: every node needs one",
                self.np
            )),
            (Some(n), Some(r)) if u64::from(n) * u64::from(r) < u64::from(self.np) => Err(format!(
                "app {name:?}: {n} nodes x {r} ranks per node hold {} processes, not np={}",
                u64::from(n) * u64::from(r),
                self.np
            )),
            (Some(n), Some(r)) if u64::from(n - 1) * u64::from(r) >= u64::from(self.np) => {
                Err(format!(
                    "app {name:?}: np={} fills {} nodes at {r} ranks per node, not {n}",
                    self.np,
                    self.np.div_ceil(r)
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Composition {
    /// Processes in all: the sum of every application's `np` (the job size).
    pub fn total_ranks(&self) -> u32 {
        self.apps.iter().map(|a| a.np).sum()
    }

    /// First global rank of application `index`.
    pub fn first_rank(&self, index: usize) -> u32 {
        self.apps[..index].iter().map(|a| a.np).sum()
    }

    /// Checks that need no XML: counts, names, programs.
    pub fn validate(&self) -> Result<(), String> {
        if self.apps.is_empty() {
            return Err("a composition needs at least one <app>".into());
        }
        let total = self.total_ranks();
        if total == 0 || total > MAX_RANKS {
            return Err(format!(
                "{total} processes in all; 1 to {MAX_RANKS} allowed"
            ));
        }
        for a in &self.apps {
            if a.np == 0 {
                return Err(format!("app {:?} has np=0", a.name));
            }
            if a.argv.is_empty() {
                return Err(format!("app {:?} has no <exe>", a.name));
            }
            a.check_placement()?;
            if !self.enclaves.iter().any(|e| e.name == a.enclave) {
                return Err(format!(
                    "app {:?} names enclave {:?}, which the composition does not have",
                    a.name, a.enclave
                ));
            }
        }
        let mut names: Vec<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two apps are named {:?}", w[0]));
        }
        Ok(())
    }

    /// Parse the XML form; errors name the line.
    pub fn from_xml(text: &str) -> Result<Self, crate::spec::SpecError> {
        use crate::spec::SpecError;
        if text.len() > crate::spec::MAX_XML_LEN {
            return Err(SpecError {
                line: None,
                message: format!(
                    "document is {} bytes; the limit is {}",
                    text.len(),
                    crate::spec::MAX_XML_LEN
                ),
            });
        }
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| SpecError {
            line: Some(e.pos().row),
            message: format!("malformed XML: {e}"),
        })?;
        let at = |n: roxmltree::Node, m: String| SpecError {
            line: Some(doc.text_pos_at(n.range().start).row),
            message: m,
        };
        let root = doc.root_element();
        if root.tag_name().name() != "composition" {
            return Err(at(
                root,
                format!(
                    "the root element is <{}>; expected <composition>",
                    root.tag_name().name()
                ),
            ));
        }
        let mut comp = Composition {
            name: root.attribute("name").unwrap_or("composition").to_string(),
            universe: root.attribute("mpiComm").unwrap_or("universe").to_string(),
            enclaves: vec![],
            apps: vec![],
        };
        for child in root.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "enclave" => parse_enclave(&doc, child, None, &mut comp)?,
                other => {
                    return Err(at(
                        child,
                        format!("unknown element <{other}> in <composition>: expected <enclave>"),
                    ))
                }
            }
        }
        comp.validate().map_err(|m| at(root, m))?;
        Ok(comp)
    }
}

fn parse_enclave(
    doc: &roxmltree::Document,
    node: roxmltree::Node,
    parent: Option<&str>,
    comp: &mut Composition,
) -> Result<(), crate::spec::SpecError> {
    use crate::spec::SpecError;
    let at = |n: roxmltree::Node, m: String| SpecError {
        line: Some(doc.text_pos_at(n.range().start).row),
        message: m,
    };
    let num = |n: roxmltree::Node, attr: &str, default: u64| -> Result<u64, SpecError> {
        match n.attribute(attr) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| at(n, format!("{attr}=\"{v}\" is not a non-negative integer"))),
        }
    };
    let name = node
        .attribute("name")
        .ok_or_else(|| at(node, "<enclave> needs name=\"...\"".into()))?
        .to_string();
    crate::spec::validate_name(&name).map_err(|m| at(node, m))?;
    if comp.enclaves.iter().any(|e| e.name == name) {
        return Err(at(node, format!("enclave {name:?} appears twice")));
    }
    for a in node.attributes() {
        if !matches!(
            a.name(),
            "name" | "cores" | "memory" | "shared" | "ipc" | "num" | "mpiComm"
        ) {
            return Err(at(
                node,
                format!("unknown attribute {}= on <enclave>", a.name()),
            ));
        }
    }
    let shared = match node.attribute("shared") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(at(
                node,
                format!("shared=\"{v}\" is not a boolean (true/false)"),
            ))
        }
    };
    comp.enclaves.push(CompEnclave {
        name: name.clone(),
        parent: parent.map(str::to_string),
        cores: num(node, "cores", 1)? as u32,
        memory_mib: num(node, "memory", 256)?,
        shared,
        host_ipc: match node.attribute("ipc") {
            None | Some("host") => true,
            Some("private") => false,
            Some(v) => {
                return Err(at(
                    node,
                    format!("ipc=\"{v}\": expected \"host\" or \"private\""),
                ))
            }
        },
    });
    for child in node.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "enclave" => parse_enclave(doc, child, Some(&name), comp)?,
            "app" => {
                let app_name = child
                    .attribute("name")
                    .ok_or_else(|| at(child, "<app> needs name=\"...\"".into()))?
                    .to_string();
                // Placement across the nodes of a Slurm allocation.
                let count = |attr: &str| -> Result<Option<u32>, SpecError> {
                    match child.attribute(attr) {
                        None => Ok(None),
                        Some(v) => v
                            .trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n <= MAX_RANKS)
                            .map(Some)
                            .ok_or_else(|| {
                                at(
                                    child,
                                    format!("{attr}=\"{v}\" is not a whole number from 0 to {MAX_RANKS}"),
                                )
                            }),
                    }
                };
                let nodes = count("nodes")?;
                let ranks_per_node = match child.attribute("ranks_per_node") {
                    Some(_) => count("ranks_per_node")?,
                    None => count("ranksPerNode")?,
                };
                let np = match (child.attribute("np"), child.attribute("num")) {
                    (Some(_), _) => num(child, "np", 1)?,
                    (None, Some(_)) => num(child, "num", 1)?,
                    // Placement alone says how many.
                    (None, None) => match (nodes, ranks_per_node) {
                        (Some(n), Some(r)) => u64::from(n) * u64::from(r),
                        (Some(n), None) => u64::from(n),
                        _ => 1,
                    },
                };
                let np = u32::try_from(np)
                    .ok()
                    .filter(|n| *n <= MAX_RANKS)
                    .ok_or_else(|| at(child, format!("np={np} is more than {MAX_RANKS}")))?;
                let mut app = CompApp {
                    comm: child.attribute("mpiComm").unwrap_or(&app_name).to_string(),
                    name: app_name,
                    enclave: name.clone(),
                    np,
                    argv: vec![],
                    env: vec![],
                    cwd: None,
                    mpi: match child.attribute("mpi") {
                        None => None,
                        Some(v) => Some(crate::msg::MpiFlavor::parse(v).map_err(|e| at(child, e))?),
                    },
                    nodes,
                    ranks_per_node,
                };
                app.check_placement().map_err(|m| at(child, m))?;
                for part in child.children().filter(|n| n.is_element()) {
                    let text = || part.text().unwrap_or("").trim().to_string();
                    match part.tag_name().name() {
                        "exe" if app.argv.is_empty() => app.argv.push(text()),
                        "exe" => return Err(at(part, "only one <exe> per <app>".into())),
                        "arg" if app.argv.is_empty() => return Err(at(part, "<arg> before <exe>".into())),
                        "arg" => app.argv.push(part.text().unwrap_or("").to_string()),
                        "env" => {
                            let k = part.attribute("name").ok_or_else(|| at(part, "<env> needs name=\"...\"".into()))?;
                            if k.is_empty() || k.contains('=') {
                                return Err(at(part, format!("bad environment variable name {k:?}")));
                            }
                            app.env.push((k.to_string(), part.attribute("value").unwrap_or("").to_string()));
                        }
                        "cwd" => app.cwd = Some(text()),
                        // The seeds nest communicator names; they are recorded by mpiComm= here.
                        "mpiComm" => {}
                        other => return Err(at(part, format!("unknown element <{other}> in <app>: expected <exe>, <arg>, <env> or <cwd>"))),
                    }
                }
                if app.argv.first().is_none_or(|e| e.is_empty()) {
                    return Err(at(
                        child,
                        format!("app {:?} needs <exe>program</exe>", app.name),
                    ));
                }
                comp.apps.push(app);
            }
            other => {
                return Err(at(
                    child,
                    format!("unknown element <{other}> in <enclave>: expected <app> or <enclave>"),
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

    const DOC: &str = r#"<composition name="insitu" mpiComm="universe">
  <enclave name="sim" cores="1" memory="512">
    <app name="simulation" np="2" mpiComm="simulation">
      <exe>./sim</exe> <arg>--steps</arg> <arg>100</arg>
      <env name="OMP_NUM_THREADS" value="1"/>
    </app>
    <enclave name="ana" shared="true">
      <app name="analysis" num="3"><exe>./ana</exe></app>
    </enclave>
  </enclave>
</composition>"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Composition::from_xml(DOC).unwrap();
        assert_eq!(c.name, "insitu");
        assert_eq!(c.enclaves.len(), 2);
        assert_eq!(c.enclaves[1].parent.as_deref(), Some("sim"));
        assert!(c.enclaves[1].shared);
        assert_eq!(c.apps[0].argv, vec!["./sim", "--steps", "100"]);
        assert_eq!(c.apps[1].np, 3);
        assert_eq!(c.apps[1].comm, "analysis");
        assert_eq!(c.total_ranks(), 5);
        assert_eq!(c.first_rank(1), 2);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = DOC.replace("np=\"2\"", "np=\"two\"");
        let e = Composition::from_xml(&bad).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let bad = DOC.replace("<exe>./ana</exe>", "");
        let e = Composition::from_xml(&bad).unwrap_err();
        assert!(e.to_string().contains("needs <exe>"), "{e}");
        assert_eq!(e.line, Some(8), "the <app> line");
        let e =
            Composition::from_xml("<composition><enclave name=\"a\"></composition>").unwrap_err();
        assert!(e.to_string().starts_with("line 1: malformed XML"), "{e}");
        let e = Composition::from_xml("<composition/>").unwrap_err();
        assert!(e.to_string().contains("at least one <app>"), "{e}");
    }

    #[test]
    fn placement_across_nodes() {
        let doc = r#"<composition>
  <enclave name="sim"><app name="sim" np="4" nodes="2" ranks_per_node="2"><exe>./sim</exe></app></enclave>
  <enclave name="ana"><app name="ana" nodes="2" ranksPerNode="1"><exe>./ana</exe></app></enclave>
  <enclave name="viz"><app name="viz"><exe>./viz</exe></app></enclave>
</composition>"#;
        let c = Composition::from_xml(doc).unwrap();
        assert_eq!(
            (c.apps[0].nodes, c.apps[0].ranks_per_node),
            (Some(2), Some(2))
        );
        assert_eq!(c.apps[1].np, 2, "np from nodes x ranks_per_node");
        assert_eq!((c.apps[2].nodes, c.apps[2].ranks_per_node), (None, None));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Composition>(&json).unwrap(), c);
        for (bad, says, line) in [
            (r#"nodes="two""#, "nodes=\"two\" is not a whole number", 2),
            (r#"nodes="0""#, "nodes=0", 2),
            (r#"ranks_per_node="0""#, "ranks_per_node=0", 2),
            (
                r#"np="5" nodes="2" ranks_per_node="2""#,
                "hold 4 processes, not np=5",
                2,
            ),
            (r#"np="2" nodes="2" ranks_per_node="2""#, "fills 1 nodes", 2),
            (r#"np="1" nodes="2""#, "every node needs one", 2),
        ] {
            let d = doc.replace(r#"np="4" nodes="2" ranks_per_node="2""#, bad);
            let e = Composition::from_xml(&d).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
            assert_eq!(e.line, Some(line), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = Composition::from_xml(&text);
        }

        #[test]
        fn never_panics_near_valid(np in "\\PC{0,5}", exe in "\\PC{0,8}", name in "\\PC{0,8}") {
            let doc = format!("<composition><enclave name=\"{name}\"><app name=\"a\" np=\"{np}\"><exe>{exe}</exe></app></enclave></composition>");
            let _ = Composition::from_xml(&doc);
        }

        #[test]
        fn accepted_placements_are_consistent(np in "\\PC{0,3}|[0-9]{1,2}", nodes in "\\PC{0,3}|[0-9]{1,2}", rpn in "\\PC{0,3}|[0-9]{1,2}") {
            let doc = format!("<composition><enclave name=\"e\"><app name=\"a\" np=\"{np}\" nodes=\"{nodes}\" ranks_per_node=\"{rpn}\"><exe>x</exe></app></enclave></composition>");
            if let Ok(c) = Composition::from_xml(&doc) {
                let a = &c.apps[0];
                let (n, r) = (a.nodes.unwrap(), a.ranks_per_node.unwrap());
                prop_assert!(n >= 1 && r >= 1 && n <= a.np);
                prop_assert!(n * r >= a.np && (n - 1) * r < a.np);
            }
        }
    }
}
