//! Parse the `MPI_` prototypes of an installed `mpi.h` and generate the
//! communicator-substituting wrappers of libremora.
//!
//! Shared by `build.rs` (through `#[path]`) and the library (for its unit
//! tests), so it uses only `std`.
//!
//! One parser serves both MPIs; what differs is a [`Dialect`] (the
//! declaration macros to drop, the functions not to substitute). Both
//! MPICH's and Open MPI's headers declare one prototype per statement,
//! `[SPECIFIERS] RET NAME(PARAMS) ATTRIBUTES;`, with no nested parentheses
//! inside the parameter list (function-pointer parameters use typedefs).
//! Comments, string literals (Open MPI's deprecation attributes carry
//! messages with `;` in them) and preprocessor lines are dropped first, so
//! conditionally compiled prototypes are all seen; the C compiler then checks
//! every generated wrapper against the real declaration it includes, so a
//! prototype parsed wrongly fails the build instead of miscompiling. A
//! statement that names an `MPI_` function but whose return type is not a
//! plain type is an error, not skipped.
//!
//! It also generates the `use mpi_f08` wrappers for MPICH
//! ([`f08_wrappers`], [`generate_f08_c`]), whose f08 layer passes the
//! integer handle straight to C `PMPI_*` functions.

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
    // A function in Open MPI (a macro in MPICH): MPI_COMM_WORLD keeps its
    // Fortran value, which is mapped where Fortran uses it.
    "MPI_Comm_c2f",
];

/// What differs between the MPIs' headers; the parser is the same.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    /// The MPI, for messages.
    pub name: &'static str,
    /// Declaration macros written before the return type, dropped from it
    /// (Open MPI's `OMPI_DECLSPEC`). `extern` is always dropped.
    pub decl_specifiers: &'static [&'static str],
}

/// MPICH's `mpi.h` (`int MPI_Send(...) MPICH_API_PUBLIC;`).
pub const MPICH: Dialect = Dialect {
    name: "MPICH",
    decl_specifiers: &[],
};

/// Open MPI's `mpi.h` (`OMPI_DECLSPEC int MPI_Send(...);`).
pub const OPEN_MPI: Dialect = Dialect {
    name: "Open MPI",
    decl_specifiers: &["OMPI_DECLSPEC"],
};

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
            // Only plain names: Open MPI's mpi.h also includes its C++
            // bindings by a relative path, which are not C.
            if let Some(inc) = included_name(line).filter(|i| !i.contains('/')) {
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

/// Remove `/* */` and `//` comments, the contents of string and character
/// literals (kept as `""`, `''`; a literal ends at the end of its line at the
/// latest) and preprocessor lines (with their backslash continuations).
fn strip_noise(text: &str) -> String {
    #[derive(PartialEq)]
    enum State {
        Code,
        Block,
        Line,
        Literal(char),
    }
    let mut no_comments = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            State::Code => match (c, chars.peek()) {
                ('/', Some('*')) => {
                    chars.next();
                    no_comments.push(' ');
                    state = State::Block;
                }
                ('/', Some('/')) => state = State::Line,
                ('"' | '\'', _) => {
                    no_comments.push(c);
                    state = State::Literal(c);
                }
                _ => no_comments.push(c),
            },
            State::Block => {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    state = State::Code;
                } else if c == '\n' {
                    no_comments.push('\n');
                }
            }
            State::Line => {
                if c == '\n' {
                    no_comments.push('\n');
                    state = State::Code;
                }
            }
            State::Literal(quote) => {
                if c == '\\' {
                    chars.next();
                } else if c == quote || c == '\n' {
                    no_comments.push(quote);
                    if c == '\n' {
                        no_comments.push('\n');
                    }
                    state = State::Code;
                }
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

/// Every `MPI_`/`MPIX_`/`PMPI_`/`PMPIX_` prototype in `text`, a header of
/// `dialect`. Errors name a statement that looks like such a prototype but
/// whose return type is not a plain type (the header's format changed).
pub fn parse_prototypes(text: &str, dialect: &Dialect) -> Result<Vec<Proto>, String> {
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
        let ret = before[..name_start]
            .split_whitespace()
            .filter(|w| *w != "extern" && !dialect.decl_specifiers.contains(w))
            .collect::<Vec<_>>()
            .join(" ");
        let wanted = ["MPI_", "MPIX_", "PMPI_", "PMPIX_"]
            .iter()
            .any(|p| name.starts_with(p));
        // `typedef int (MPI_X)(...)` and macros-looking statements are not
        // prototypes: a prototype has a plain return type before the name.
        if !wanted || ret.is_empty() || ret.starts_with("typedef") || ret.contains('(') {
            continue;
        }
        if !ret
            .chars()
            .all(|c| is_ident_char(c) || c == '*' || c == ' ')
        {
            return Err(format!(
                "{} header: cannot parse the return type of {name} in `{stmt}`",
                dialect.name
            ));
        }
        let Some(close) = stmt[open..].find(')').map(|c| open + c) else {
            return Err(format!(
                "{} header: no closing parenthesis for {name} in `{stmt}`",
                dialect.name
            ));
        };
        let params = stmt[open + 1..close]
            .split(',')
            .filter_map(parse_param)
            .collect();
        out.push(Proto {
            ret,
            name: name.to_string(),
            params,
        });
    }
    Ok(out)
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
    c.push_str("/* Deprecated functions are wrapped on purpose. */\n");
    c.push_str("#pragma GCC diagnostic ignored \"-Wdeprecated-declarations\"\n\n");
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

/// One `use mpi_f08` entry point of MPICH that libremora wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct F08Wrapper {
    /// The entry point the f08 module calls (`mpi_send_f08ts_`).
    pub symbol: String,
    /// Its profiling twin in libmpichfort (`pmpir_send_f08ts_`).
    pub twin: String,
    /// The C prototype it corresponds to: the f08 procedure takes the same
    /// arguments in the same order, each by reference, then the optional
    /// `ierror`, then one hidden length per character argument.
    pub proto: Proto,
    /// Call the twin on the application's world and then on the real world
    /// (`MPI_Comm_set_errhandler`, as the C core does).
    pub on_both_worlds: bool,
}

/// Is this C parameter a character argument in Fortran (which gfortran
/// follows with a hidden length)? `const char *name`, `char *argv[]`,
/// `char **array_of_argv[]`.
fn is_character(param: &Param) -> bool {
    param
        .decl
        .split(|c: char| !is_ident_char(c))
        .any(|w| w == "char")
}

/// The MPICH f08 entry points to wrap: for every C function that the C
/// wrappers cover (`wrapped`, from [`wrappable`]) or that is set on both
/// worlds, the f08 procedure MPICH exports (`exported`, the names of
/// libmpichfort's dynamic symbols): `mpi_NAME_f08_` or `mpi_NAME_f08ts_`
/// (choice buffer), with `large_` appended for the `MPI_NAME_c` variant, and
/// its `pmpir_` twin. C functions without both symbols are left out (no f08
/// binding, e.g. `MPIX_`). `MPI_Abort` and the attribute getters stay
/// unwrapped: their f08 procedures then act on the real world, which is
/// right for `MPI_Abort` and for predefined attributes.
pub fn f08_wrappers(
    wrapped: &[Proto],
    all: &[Proto],
    exported: &BTreeSet<String>,
) -> Vec<F08Wrapper> {
    let both = all
        .iter()
        .filter(|p| p.name == "MPI_Comm_set_errhandler")
        .take(1);
    let mut out = Vec::new();
    for (proto, on_both_worlds) in wrapped
        .iter()
        .map(|p| (p, false))
        .chain(both.map(|p| (p, true)))
    {
        let Some(base) = proto.name.strip_prefix("MPI_") else {
            continue;
        };
        let base = base.to_ascii_lowercase();
        let (base, large) = match base.strip_suffix("_c") {
            Some(b) => (b.to_string(), "large_"),
            None => (base, ""),
        };
        let found = ["f08", "f08ts"].iter().find_map(|kind| {
            let symbol = format!("mpi_{base}_{kind}_{large}");
            let twin = format!("pmpir_{base}_{kind}_{large}");
            (exported.contains(&symbol) && exported.contains(&twin)).then_some((symbol, twin))
        });
        if let Some((symbol, twin)) = found {
            out.push(F08Wrapper {
                symbol,
                twin,
                proto: proto.clone(),
                on_both_worlds,
            });
        }
    }
    out.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    out.dedup_by(|a, b| a.symbol == b.symbol);
    out
}

/// The C source of the f08 wrappers: each copies its communicator
/// arguments (intent(in): the caller's may be a constant) through
/// `remora_fortran_world_map` and calls the twin, found at run time with
/// `remora_fortran_twin` (so libremora does not link the Fortran library
/// into C programs).
pub fn generate_f08_c(wrappers: &[F08Wrapper], source: &str) -> String {
    let mut c = String::new();
    c.push_str("/* Generated by crates/remora-pmpi/build.rs from ");
    c.push_str(source);
    c.push_str(" and libmpichfort's symbols -- do not edit.\n");
    c.push_str(" * Every `use mpi_f08` procedure taking a communicator by value in C:\n");
    c.push_str(" * substitute the application's world for MPI_COMM_WORLD, call the twin. */\n");
    c.push_str("#include <stddef.h>\n\n#include \"remora_internal.h\"\n\n");
    c.push_str(&format!(
        "const int remora_generated_f08_wrapper_count = {};\n\n",
        wrappers.len()
    ));
    for w in wrappers {
        let n = w.proto.params.len();
        let strings = w.proto.params.iter().filter(|p| is_character(p)).count();
        let mut decls = Vec::new();
        let mut types = Vec::new();
        let mut args = Vec::new();
        let mut body = String::new();
        for (i, p) in w.proto.params.iter().enumerate() {
            if p.is_comm {
                decls.push(format!("const MPI_Fint *p{i}"));
                types.push("const MPI_Fint *".to_string());
                body.push_str(&format!(
                    "    MPI_Fint c{i} = remora_fortran_world_map(*p{i});\n"
                ));
                args.push(format!("&c{i}"));
            } else {
                decls.push(format!("void *p{i}"));
                types.push("void *".to_string());
                args.push(format!("p{i}"));
            }
        }
        decls.push("MPI_Fint *ierror".to_string());
        types.push("MPI_Fint *".to_string());
        args.push(if w.on_both_worlds { "&rc" } else { "ierror" }.to_string());
        for k in 0..strings {
            decls.push(format!("size_t len{k}"));
            types.push("size_t".to_string());
            args.push(format!("len{k}"));
        }
        debug_assert_eq!(decls.len(), n + 1 + strings);
        c.push_str(&format!(
            "typedef void (*{sym}_t)({types});\nvoid {sym}({decls});\nvoid {sym}({decls})\n{{\n",
            sym = w.symbol,
            types = types.join(", "),
            decls = decls.join(", ")
        ));
        c.push_str("    static void *cache;\n");
        c.push_str(&body);
        c.push_str(&format!(
            "    {sym}_t twin = ({sym}_t)remora_fortran_twin(&cache, \"{twin}\");\n",
            sym = w.symbol,
            twin = w.twin
        ));
        if w.on_both_worlds {
            let comm = w.proto.params.iter().position(|p| p.is_comm).unwrap_or(0);
            c.push_str("    MPI_Fint rc = 0;\n");
            c.push_str(&format!("    twin({});\n", args.join(", ")));
            c.push_str(&format!("    if (rc == 0 && c{comm} != *p{comm})\n"));
            let again: Vec<String> = args
                .iter()
                .map(|a| {
                    if *a == format!("&c{comm}") {
                        format!("p{comm}")
                    } else {
                        a.clone()
                    }
                })
                .collect();
            c.push_str(&format!("        twin({});\n", again.join(", ")));
            c.push_str("    if (ierror != NULL)\n        *ierror = rc;\n");
        } else {
            c.push_str(&format!("    twin({});\n", args.join(", ")));
        }
        c.push_str("}\n\n");
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
        let protos = parse_prototypes(SAMPLE, &MPICH).unwrap();
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
        let names: Vec<String> = parse_prototypes(SAMPLE, &MPICH)
            .unwrap()
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
        let w: Vec<String> = wrappable(&parse_prototypes(SAMPLE, &MPICH).unwrap())
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(w, ["MPI_Allgather", "MPI_Cart_create", "MPI_Comm_compare"]);
    }

    #[test]
    fn generated_wrapper_maps_every_comm_argument() {
        let w = wrappable(&parse_prototypes(SAMPLE, &MPICH).unwrap());
        let c = generate_c(&w, "sample");
        assert!(c.contains(
            "int MPI_Comm_compare(MPI_Comm comm1, MPI_Comm comm2, int *result)\n{\n    \
             return PMPI_Comm_compare(remora_world_map(comm1), remora_world_map(comm2), result);"
        ));
        assert!(c.contains("remora_generated_wrapper_count = 3;"));
    }

    const OMPI_SAMPLE: &str = r#"
OMPI_DECLSPEC  int MPI_Send(const void *buf, int count, MPI_Datatype datatype, int dest,
                            int tag, MPI_Comm comm);
OMPI_DECLSPEC  int MPI_Attr_delete(MPI_Comm comm, int keyval)
            __mpi_interface_deprecated__("MPI_Attr_delete was deprecated in MPI-2.0; use MPI_Comm_delete_attr instead");
OMPI_DECLSPEC  int PMPI_Attr_delete(MPI_Comm comm, int keyval)
            __mpi_interface_deprecated__("PMPI_Attr_delete was deprecated; use it");
OMPI_DECLSPEC  MPI_Fint MPI_Comm_c2f(MPI_Comm comm);
OMPI_DECLSPEC  MPI_Fint PMPI_Comm_c2f(MPI_Comm comm);
OMPI_DECLSPEC  int PMPI_Send(const void *buf, int count, MPI_Datatype datatype, int dest,
                             int tag, MPI_Comm comm);
"#;

    #[test]
    fn open_mpi_declspec_and_deprecation_messages_with_semicolons() {
        let protos = parse_prototypes(OMPI_SAMPLE, &OPEN_MPI).unwrap();
        let del = protos.iter().find(|p| p.name == "MPI_Attr_delete").unwrap();
        assert_eq!(del.ret, "int");
        assert_eq!(del.params.len(), 2);
        let w: Vec<String> = wrappable(&protos).into_iter().map(|p| p.name).collect();
        assert_eq!(
            w,
            ["MPI_Attr_delete", "MPI_Send"],
            "MPI_Comm_c2f is not substituted"
        );
    }

    #[test]
    fn a_return_type_that_is_not_a_type_fails() {
        let err = parse_prototypes("int MPI_Foo(int a);\nx ) y MPI_Bar(MPI_Comm c);", &MPICH)
            .unwrap_err();
        assert!(err.contains("MPI_Bar"), "{err}");
    }

    #[test]
    fn f08_wrappers_follow_mpich_names_and_pass_hidden_lengths() {
        let protos = parse_prototypes(
            "int MPI_Comm_set_name(MPI_Comm comm, const char *comm_name);\n\
             int PMPI_Comm_set_name(MPI_Comm comm, const char *comm_name);\n\
             int MPI_Send_c(const void *buf, MPI_Count c, MPI_Datatype t, int d, int g, MPI_Comm comm);\n\
             int PMPI_Send_c(const void *buf, MPI_Count c, MPI_Datatype t, int d, int g, MPI_Comm comm);",
            &MPICH,
        )
        .unwrap();
        let exported: BTreeSet<String> = [
            "mpi_comm_set_name_f08_",
            "pmpir_comm_set_name_f08_",
            "mpi_send_f08ts_large_",
            "pmpir_send_f08ts_large_",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let w = f08_wrappers(&wrappable(&protos), &protos, &exported);
        let names: Vec<&str> = w.iter().map(|w| w.symbol.as_str()).collect();
        assert_eq!(names, ["mpi_comm_set_name_f08_", "mpi_send_f08ts_large_"]);
        let c = generate_f08_c(&w, "sample");
        assert!(c.contains(
            "void mpi_comm_set_name_f08_(const MPI_Fint *p0, void *p1, MPI_Fint *ierror, size_t len0)"
        ));
        assert!(c.contains("MPI_Fint c0 = remora_fortran_world_map(*p0);"));
        assert!(c.contains("twin(&c0, p1, ierror, len0);"));
        assert!(c.contains("\"pmpir_send_f08ts_large_\""));
    }

    #[test]
    fn include_names() {
        assert_eq!(included_name("#include <mpi_proto.h>"), Some("mpi_proto.h"));
        assert_eq!(included_name("#  include \"mpio.h\""), Some("mpio.h"));
        assert_eq!(included_name("int x;"), None);
    }
}
