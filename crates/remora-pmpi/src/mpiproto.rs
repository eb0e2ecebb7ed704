//! Parse the `MPI_` prototypes of an installed `mpi.h` and generate the
//! communicator-substituting wrappers of libremora.
//!
//! Shared by `build.rs` (through `#[path]`) and the library (for its unit
//! tests), so it uses only `std`.
//!
//! The parser is deliberately small: MPICH's headers declare one prototype
//! per statement, `RET NAME(PARAMS) ATTRIBUTES;`, with no nested parentheses
//! inside the parameter list (function-pointer parameters use typedefs).
//! Comments and preprocessor lines are dropped first, so conditionally
//! compiled prototypes are all seen; the C compiler then checks every
//! generated wrapper against the real declaration it includes, so a
//! prototype parsed wrongly fails the build instead of miscompiling.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One parameter of a prototype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// The declaration as written (`MPI_Comm comm`, `const int ranks[]`).
    pub decl: String,
    /// The parameter's name (`comm`).
    pub name: String,
    /// True when the parameter is an `MPI_Comm` passed by value.
    pub is_comm: bool,
}

/// One function prototype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proto {
    /// The return type as written before the name, whitespace-trimmed
    /// (`int`, `double`); copied verbatim into the generated wrapper.
    pub ret: String,
    /// The function's name (`MPI_Allgather`); the wrapper calls `P` + this.
    pub name: String,
    /// The parameters in declaration order; empty for `(void)`, and `...`
    /// is left out.
    pub params: Vec<Param>,
}

impl Proto {
    /// True when some parameter is an `MPI_Comm` passed by value.
    pub fn takes_comm(&self) -> bool {
        self.params.iter().any(|p| p.is_comm)
    }
}

/// Functions libremora writes by hand (csrc/remora_core.c) because plain
/// substitution would be wrong for them; the generator leaves them out.
pub const HAND_WRITTEN: &[&str] = &[
    // Must end the whole job, so they go to the real world.
    "MPI_Abort",
    // Predefined attributes live only on the real world.
    "MPI_Comm_get_attr",
    "MPI_Attr_get",
    // Set on the application's world and on the real world.
    "MPI_Comm_set_errhandler",
    "MPI_Errhandler_set",
];

/// Functions that take a communicator by value but must not be substituted.
pub const NOT_SUBSTITUTED: &[&str] = &[
    // The predefined attribute-copy callback: MPI calls it, the program
    // does not, and its `oldcomm` is whatever communicator is being copied.
    "MPI_DUP_FN",
];

/// Read `header` and every `#include`d header that sits in the same
/// directory (mpi.h pulls in mpi_proto.h and mpio.h that way), returning the
/// files in the order read, without duplicates.
pub fn header_closure(header: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let dir = header.parent().unwrap_or(Path::new("."));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut todo = vec![header.to_path_buf()];
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            if let Some(inc) = included_name(line) {
                let candidate = dir.join(inc);
                if candidate.is_file() {
                    todo.push(candidate);
                }
            }
        }
        out.push((path, text));
    }
    Ok(out)
}

/// `#include <x.h>` / `#include "x.h"` -> `x.h`.
fn included_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim();
    let inner = rest
        .strip_prefix('<')
        .and_then(|r| r.split('>').next())
        .or_else(|| rest.strip_prefix('"').and_then(|r| r.split('"').next()))?;
    Some(inner.trim())
}

/// Remove `/* */` and `//` comments and preprocessor lines (with their
/// backslash continuations).
fn strip_noise(text: &str) -> String {
    let mut no_comments = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if b < l.unwrap_or(usize::MAX) => {
                no_comments.push_str(&rest[..b]);
                rest = match rest[b + 2..].find("*/") {
                    Some(end) => &rest[b + 2 + end + 2..],
                    None => "",
                };
                no_comments.push(' ');
            }
            (_, Some(l)) => {
                no_comments.push_str(&rest[..l]);
                rest = match rest[l..].find('\n') {
                    Some(end) => &rest[l + end..],
                    None => "",
                };
            }
            _ => {
                no_comments.push_str(rest);
                break;
            }
        }
    }
    let mut out = String::with_capacity(no_comments.len());
    let mut in_directive = false;
    for line in no_comments.lines() {
        let starts = line.trim_start().starts_with('#');
        if starts || in_directive {
            in_directive = line.trim_end().ends_with('\\');
            out.push('\n');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Split one parameter declaration into its name and whether it is an
/// `MPI_Comm` by value. `None` for `void` and `...`.
fn parse_param(decl: &str) -> Option<Param> {
    let decl = decl.split_whitespace().collect::<Vec<_>>().join(" ");
    if decl.is_empty() || decl == "void" || decl == "..." {
        return None;
    }
    // The name is the last identifier before any array suffix.
    let head = decl.split('[').next().unwrap_or(&decl).trim_end();
    let name_start = head
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_ident_char(c))
        .last()
        .map(|(i, _)| i)?;
    let name = head[name_start..].to_string();
    let ty = head[..name_start].trim();
    let is_array = decl.contains('[');
    let ty_words: Vec<&str> = ty.split_whitespace().filter(|w| *w != "const").collect();
    let is_comm = !is_array && ty_words == ["MPI_Comm"];
    Some(Param {
        decl,
        name,
        is_comm,
    })
}

/// Every `MPI_`/`MPIX_`/`PMPI_`/`PMPIX_` prototype in `text`.
pub fn parse_prototypes(text: &str) -> Vec<Proto> {
    let clean = strip_noise(text);
    let mut out = Vec::new();
    for stmt in clean.split([';', '{', '}']) {
        let stmt = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(open) = stmt.find('(') else { continue };
        let before = stmt[..open].trim_end();
        let name_start = before
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_ident_char(c))
            .last()
            .map(|(i, _)| i);
        let Some(name_start) = name_start else {
            continue;
        };
        let name = &before[name_start..];
        let ret = before[..name_start].trim();
        let wanted = ["MPI_", "MPIX_", "PMPI_", "PMPIX_"]
            .iter()
            .any(|p| name.starts_with(p));
        // `typedef int (MPI_X)(...)` and macros-looking statements are not
        // prototypes: a prototype has a plain return type before the name.
        if !wanted || ret.is_empty() || ret.starts_with("typedef") || ret.contains('(') {
            continue;
        }
        let Some(close) = stmt[open..].find(')').map(|c| open + c) else {
            continue;
        };
        let params = stmt[open + 1..close]
            .split(',')
            .filter_map(parse_param)
            .collect();
        out.push(Proto {
            ret: ret.to_string(),
            name: name.to_string(),
            params,
        });
    }
    out
}

/// The prototypes libremora wraps: `MPI_`/`MPIX_` ones taking an `MPI_Comm`
/// by value, that have a `P`-prefixed profiling twin, minus the hand-written
/// and never-substituted ones. Sorted by name, one per name.
pub fn wrappable(protos: &[Proto]) -> Vec<Proto> {
    let profiled: BTreeSet<&str> = protos
        .iter()
        .filter_map(|p| p.name.strip_prefix('P'))
        .collect();
    let mut seen = BTreeSet::new();
    let mut out: Vec<Proto> = protos
        .iter()
        .filter(|p| p.name.starts_with("MPI_") || p.name.starts_with("MPIX_"))
        .filter(|p| p.takes_comm())
        .filter(|p| profiled.contains(p.name.as_str()))
        .filter(|p| !HAND_WRITTEN.contains(&p.name.as_str()))
        .filter(|p| !NOT_SUBSTITUTED.contains(&p.name.as_str()))
        .filter(|p| seen.insert(p.name.clone()))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The C source of the wrappers: each maps its communicator arguments with
/// `remora_world_map` and calls the `PMPI_` twin.
pub fn generate_c(wrappers: &[Proto], source: &str) -> String {
    let mut c = String::new();
    c.push_str("/* Generated by crates/remora-pmpi/build.rs from ");
    c.push_str(source);
    c.push_str(" -- do not edit.\n");
    c.push_str(" * Every MPI function taking an MPI_Comm by value: substitute the\n");
    c.push_str(" * application's world for MPI_COMM_WORLD, then call the PMPI_ twin. */\n");
    c.push_str("#include \"remora_internal.h\"\n\n");
    c.push_str(&format!(
        "const int remora_generated_wrapper_count = {};\n\n",
        wrappers.len()
    ));
    for p in wrappers {
        let decls: Vec<&str> = p.params.iter().map(|q| q.decl.as_str()).collect();
        let names: Vec<String> = p
            .params
            .iter()
            .map(|q| {
                if q.is_comm {
                    format!("remora_world_map({})", q.name)
                } else {
                    q.name.clone()
                }
            })
            .collect();
        let decls = if decls.is_empty() {
            "void".to_string()
        } else {
            decls.join(", ")
        };
        c.push_str(&format!(
            "{} {}({})\n{{\n    return P{}({});\n}}\n\n",
            p.ret,
            p.name,
            decls,
            p.name,
            names.join(", ")
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
/* comment with int MPI_Fake(MPI_Comm c); inside */
#define MPI_Comm_c2f(comm) (MPI_Fint)(comm)
#if defined(X) && \
    defined(Y)
#endif
int MPI_Allgather(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                  int recvcount, MPI_Datatype recvtype, MPI_Comm comm)
                  MPICH_ATTR_POINTER_WITH_TYPE_TAG(1,3) MPICH_API_PUBLIC;
int MPI_Comm_free(MPI_Comm *comm) MPICH_API_PUBLIC;
int MPI_Comm_compare(MPI_Comm comm1, MPI_Comm comm2, int *result) MPICH_API_PUBLIC;
int MPI_Abort(MPI_Comm comm, int errorcode) MPICH_API_PUBLIC;
double MPI_Wtime(void) MPICH_API_PUBLIC;
int MPI_Cart_create(MPI_Comm comm_old, int ndims, const int dims[], const int periods[],
                    int reorder, MPI_Comm *comm_cart) MPICH_API_PUBLIC;
typedef int (MPI_Comm_copy_attr_function)(MPI_Comm, int, void *, void *, void *, int *);
int MPI_No_twin(MPI_Comm comm);
int QMPI_Allgather(QMPI_Context context, int tool_id, MPI_Comm comm);
int PMPI_Allgather(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                   int recvcount, MPI_Datatype recvtype, MPI_Comm comm);
int PMPI_Comm_free(MPI_Comm *comm);
int PMPI_Comm_compare(MPI_Comm comm1, MPI_Comm comm2, int *result);
int PMPI_Abort(MPI_Comm comm, int errorcode);
double PMPI_Wtime(void);
int PMPI_Cart_create(MPI_Comm comm_old, int ndims, const int dims[], const int periods[],
                     int reorder, MPI_Comm *comm_cart);
"#;

    #[test]
    fn parses_parameters_and_comm_by_value() {
        let protos = parse_prototypes(SAMPLE);
        let ag = protos.iter().find(|p| p.name == "MPI_Allgather").unwrap();
        assert_eq!(ag.ret, "int");
        assert_eq!(ag.params.len(), 7);
        assert_eq!(ag.params[0].decl, "const void *sendbuf");
        assert_eq!(ag.params[0].name, "sendbuf");
        assert!(ag.params[6].is_comm);
        let free = protos.iter().find(|p| p.name == "MPI_Comm_free").unwrap();
        assert!(!free.takes_comm(), "MPI_Comm * is not by value");
        let wtime = protos.iter().find(|p| p.name == "MPI_Wtime").unwrap();
        assert_eq!(wtime.ret, "double");
        assert!(wtime.params.is_empty());
        let cart = protos.iter().find(|p| p.name == "MPI_Cart_create").unwrap();
        assert_eq!(cart.params[2].name, "dims");
        assert!(cart.params[0].is_comm && !cart.params[5].is_comm);
    }

    #[test]
    fn ignores_comments_macros_typedefs_and_qmpi() {
        let names: Vec<String> = parse_prototypes(SAMPLE)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(!names.iter().any(|n| n == "MPI_Fake"));
        assert!(!names.iter().any(|n| n == "MPI_Comm_c2f"));
        assert!(!names.iter().any(|n| n == "MPI_Comm_copy_attr_function"));
        assert!(!names.iter().any(|n| n.starts_with("QMPI")));
    }

    #[test]
    fn wraps_only_comm_taking_functions_with_a_pmpi_twin_not_hand_written() {
        let w: Vec<String> = wrappable(&parse_prototypes(SAMPLE))
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(w, ["MPI_Allgather", "MPI_Cart_create", "MPI_Comm_compare"]);
    }

    #[test]
    fn generated_wrapper_maps_every_comm_argument() {
        let w = wrappable(&parse_prototypes(SAMPLE));
        let c = generate_c(&w, "sample");
        assert!(c.contains(
            "int MPI_Comm_compare(MPI_Comm comm1, MPI_Comm comm2, int *result)\n{\n    \
             return PMPI_Comm_compare(remora_world_map(comm1), remora_world_map(comm2), result);"
        ));
        assert!(c.contains("remora_generated_wrapper_count = 3;"));
    }

    #[test]
    fn include_names() {
        assert_eq!(included_name("#include <mpi_proto.h>"), Some("mpi_proto.h"));
        assert_eq!(included_name("#  include \"mpio.h\""), Some("mpio.h"));
        assert_eq!(included_name("int x;"), None);
    }
}
