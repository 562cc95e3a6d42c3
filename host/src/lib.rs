//! saga-host: runs business services compiled to WebAssembly components and gives them a
//! message broker, event-sourced storage and a saga orchestrator. See ARCHITECTURE.md for the
//! map of the code.

pub mod allocator;
pub mod broker;
pub mod check;
pub mod cluster;
pub mod deploy;
pub mod ends;
pub mod files;
pub mod handler;
pub mod harness;
pub mod host;
pub mod http;
pub mod runtime;
pub mod saga;
pub mod storage;
pub mod telemetry;
pub mod tls;

pub use host::{Config, Running, StartError, start};

/// ARCHITECTURE.md's "who may use whom", held against the code (every `crate::` path in a
/// module must name a module it may use), and a doc comment on every public type.
#[cfg(test)]
mod architecture {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Leaf modules every module may use: what the host tells operators, and durable files.
    const EVERYONE_MAY_USE: &[&str] = &["telemetry", "files"];

    /// Each module and the modules it may use (besides saga-core and `EVERYONE_MAY_USE`).
    const MAY_USE: &[(&str, &[&str])] = &[
        ("allocator", &[]),
        ("telemetry", &[]),
        ("files", &[]),
        // The HTTPS listener and its certificate checks.
        ("tls", &[]),
        ("storage", &[]),
        // The binary's remote commands talk to a host over HTTP only.
        ("cli", &[]),
        // The binary's `new`: it writes files from templates.
        ("scaffold", &[]),
        ("ends", &[]),
        ("broker", &["storage"]),
        ("runtime", &["storage", "broker"]),
        ("handler", &["runtime", "broker", "storage", "ends"]),
        ("saga", &["handler", "runtime", "broker", "storage", "ends"]),
        ("deploy", &["runtime", "storage"]),
        ("cluster", &["saga", "broker", "storage"]),
        (
            "http",
            &["handler", "saga", "deploy", "runtime", "broker", "storage"],
        ),
        (
            "harness",
            &[
                "host", "http", "handler", "saga", "runtime", "broker", "storage",
            ],
        ),
        ("check", &["harness", "saga", "runtime"]),
        (
            "host",
            &[
                "http", "cluster", "deploy", "saga", "handler", "runtime", "broker", "storage",
                "ends", "tls",
            ],
        ),
    ];

    /// The module a source file belongs to: its first path component under src/.
    fn module_of(file: &Path, src: &Path) -> String {
        let relative = file.strip_prefix(src).expect("a file under src/");
        let first = relative.components().next().expect("a path component");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    }

    fn sources(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn every_public_type_says_what_it_is() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut undocumented = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let lines: Vec<&str> = text.lines().collect();
            for (number, line) in lines.iter().enumerate() {
                let declared = ["pub struct ", "pub enum ", "pub trait ", "pub type "]
                    .iter()
                    .any(|start| line.trim_start().starts_with(start));
                if !declared {
                    continue;
                }
                let above = lines[..number]
                    .iter()
                    .rev()
                    .find(|l| !l.trim_start().starts_with("#["));
                if !above.is_some_and(|l| l.trim_start().starts_with("///")) {
                    undocumented.push(format!("{}:{}: {line}", file.display(), number + 1));
                }
            }
        }
        assert!(
            undocumented.is_empty(),
            "public types without a doc comment:\n{}",
            undocumented.join("\n")
        );
    }

    #[test]
    fn each_module_uses_only_what_architecture_md_allows() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let allowed: BTreeMap<&str, BTreeSet<&str>> = MAY_USE
            .iter()
            .map(|(module, uses)| (*module, uses.iter().copied().collect()))
            .collect();
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut forbidden = Vec::new();
        for file in files {
            let module = module_of(&file, &src);
            if matches!(module.as_str(), "lib" | "main") {
                continue;
            }
            let may = allowed.get(module.as_str()).unwrap_or_else(|| {
                panic!("module {module} is not in MAY_USE: say what it may use (and update ARCHITECTURE.md)")
            });
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for (at, _) in text.match_indices("crate::") {
                let used: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used != module
                    && !EVERYONE_MAY_USE.contains(&used.as_str())
                    && !may.contains(used.as_str())
                {
                    forbidden.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
        assert!(
            forbidden.is_empty(),
            "imports ARCHITECTURE.md does not allow:\n{}",
            forbidden.join("\n")
        );
    }
}
