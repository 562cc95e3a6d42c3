//! `saga-host new`: writes a ready-to-build service in Rust, Python or JavaScript — a
//! participant, or with `--orchestrator` an orchestrator whose saga invokes such a participant —
//! from the templates in host/templates/ (compiled into the binary). The binary's own module: it
//! uses nothing of the host, only the files of a saga-host repository (its SDKs and WIT), whose
//! absolute paths the generated project names.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// The language of the service to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Language {
    Rust,
    #[value(alias = "py")]
    Python,
    #[value(alias = "javascript")]
    Js,
}

/// `saga-host new LANGUAGE NAME`: the arguments.
#[derive(Args)]
pub struct New {
    /// The service's language.
    #[arg(value_enum)]
    language: Language,
    /// The service's name: lowercase letters, digits and single '-' between them, starting with
    /// a letter ("stock", "order-items"). Its routes are POST /NAME and GET /NAME/{uuid}.
    name: String,
    /// Write an orchestrator (WIT world `orchestrator`): POST /NAME runs a saga whose step
    /// invokes the participant's command `Reserve<Participant>`, compensated by
    /// `Release<Participant>`. Without it: a participant that declares those two commands.
    #[arg(long)]
    orchestrator: bool,
    /// With --orchestrator: the participant the saga invokes, a service that
    /// `saga-host new LANGUAGE PARTICIPANT` writes.
    #[arg(
        long,
        value_name = "PARTICIPANT",
        default_value = "stock",
        requires = "orchestrator"
    )]
    participant: String,
    /// The directory to write, which must not exist or be empty; default: ./NAME.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The saga-host repository whose SDKs (guest-sdk/, sdk/) and WIT (wit/) the service builds
    /// with; default: the repository this saga-host was built from.
    #[arg(long, env = "SAGA_HOST_SDK_ROOT", value_name = "PATH")]
    sdk_root: Option<PathBuf>,
}

/// Files of a saga-host repository the generated projects use.
const SDK_FILES: &[&str] = &[
    "guest-sdk/Cargo.toml",
    "sdk/python/saga_host/__init__.py",
    "sdk/js/index.js",
    "sdk/js/orchestrator.js",
    "wit/saga-host.wit",
];

/// Names a service may not have: the crate name cargo refuses (Rust keywords, the standard
/// crates), compared as written.
#[rustfmt::skip]
const RESERVED_NAMES: &[&str] = &[
    "abstract", "alloc", "as", "async", "await", "become", "box", "break", "const", "continue",
    "core", "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen",
    "if", "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv",
    "proc-macro", "pub", "ref", "return", "self", "static", "std", "struct", "super", "test",
    "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where",
    "while", "yield",
];

/// Type names the templates already use (the SDKs' names they import, the language's own, the
/// helpers they define), compared with the aggregate's name, NAME in PascalCase.
#[rustfmt::skip]
const RESERVED_TYPES: &[&str] = &[
    // saga-sdk (Rust) and the templates' helper types.
    "Aggregate", "Amount", "Condition", "Error", "Method", "Op", "Orchestrator", "Ordering",
    "Participant", "Reply", "Request", "Response", "Result", "Saga", "SagaContext",
    "SagaExecution", "SagaManager", "SagaStatus", "Service", "Stored", "Uuid", "Value",
    // Rust's prelude.
    "Box", "Err", "None", "Ok", "Option", "Self", "Some", "String", "Vec",
    // saga_host (Python) and Python's own.
    "CommandService", "Exception", "False", "Microservice", "QueryService", "ResponseException",
    "SagaResponse", "True",
    // The JavaScript SDK and the globals the templates use.
    "Array", "BigInt", "Boolean", "BusinessError", "Date", "Function", "Map", "Math", "Number",
    "Object", "Promise", "Proxy", "Reflect", "RegExp", "Set", "Symbol",
];

mod templates {
    //! The templates, compiled in; `{{key}}` marks a value (see `Project::values`).
    pub const SMOKE_PARTICIPANT: &str = include_str!("../templates/common/smoke-participant.json");
    pub const SMOKE_ORCHESTRATOR: &str =
        include_str!("../templates/common/smoke-orchestrator.json");
    pub const README_PARTICIPANT: &str = include_str!("../templates/common/README-participant.md");
    pub const README_ORCHESTRATOR: &str =
        include_str!("../templates/common/README-orchestrator.md");

    pub const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml");
    pub const RUST_PARTICIPANT: &str = include_str!("../templates/rust/participant.rs");
    pub const RUST_ORCHESTRATOR: &str = include_str!("../templates/rust/orchestrator.rs");
    pub const RUST_BUILD: &str = include_str!("../templates/rust/build.sh");
    pub const RUST_GITIGNORE: &str = include_str!("../templates/rust/gitignore");
    pub const RUST_TOOL: &str = include_str!("../templates/rust/tool.md");

    pub const PYTHON_PARTICIPANT: &str = include_str!("../templates/python/participant.py");
    pub const PYTHON_ORCHESTRATOR: &str = include_str!("../templates/python/orchestrator.py");
    pub const PYTHON_REQUIREMENTS: &str = include_str!("../templates/python/requirements.txt");
    pub const PYTHON_BUILD: &str = include_str!("../templates/python/build.sh");
    pub const PYTHON_GITIGNORE: &str = include_str!("../templates/python/gitignore");
    pub const PYTHON_TOOL: &str = include_str!("../templates/python/tool.md");

    pub const JS_PARTICIPANT: &str = include_str!("../templates/js/participant.js");
    pub const JS_ORCHESTRATOR: &str = include_str!("../templates/js/orchestrator.js");
    pub const JS_PACKAGE: &str = include_str!("../templates/js/package.json");
    pub const JS_LOCK: &str = include_str!("../templates/js/package-lock.json");
    pub const JS_BUILD_MJS: &str = include_str!("../templates/js/build.mjs");
    pub const JS_BUILD: &str = include_str!("../templates/js/build.sh");
    pub const JS_GITIGNORE: &str = include_str!("../templates/js/gitignore");
    pub const JS_TOOL: &str = include_str!("../templates/js/tool.md");
}

/// One file of the project: where, what, and whether it is a script.
struct File {
    path: &'static str,
    text: String,
    executable: bool,
}

/// What the templates are filled with.
struct Project {
    language: Language,
    orchestrator: bool,
    name: String,
    participant: String,
    /// The saga-host repository, absolute.
    sdk: String,
    /// This saga-host, for the build scripts' `test` mode when none is on PATH.
    saga_host: String,
}

/// Runs `saga-host new`: checks everything first, so that a refusal writes nothing.
pub fn run(new: New) -> anyhow::Result<()> {
    check_name(&new.name, "NAME")?;
    if new.orchestrator {
        check_name(&new.participant, "--participant")?;
        if new.participant == new.name {
            bail!(
                "--participant {0:?} is the orchestrator's own name: its saga invokes \
                 Reserve{1} of another service, so name that one; nothing was written",
                new.participant,
                pascal(&new.participant)
            );
        }
    }
    let sdk = sdk_root(new.sdk_root.as_deref())?;
    let given = new.dir.clone().unwrap_or_else(|| PathBuf::from(&new.name));
    let target = check_target(&given)?;
    let project = Project {
        language: new.language,
        orchestrator: new.orchestrator,
        name: new.name,
        participant: new.participant,
        sdk: plain_path(&sdk)?,
        saga_host: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok())
            .and_then(|exe| plain_path(&exe).ok())
            .unwrap_or_else(|| "saga-host".to_string()),
    };
    let mut files = project.files();
    if project.language == Language::Rust {
        // The versions the repository is tested with; cargo drops what the service does not use.
        if let Ok(lock) = fs::read_to_string(sdk.join("Cargo.lock")) {
            files.push(File {
                path: "Cargo.lock",
                text: lock,
                executable: false,
            });
        }
    }
    write_project(&target, &files)
        .with_context(|| format!("cannot write the project to {}", given.display()))?;
    print!("{}", project.summary(&given, &files));
    Ok(())
}

/// A service name the templates can use everywhere: a Rust crate, a route, a type name.
fn check_name(name: &str, what: &str) -> anyhow::Result<()> {
    let well_formed = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.split('-').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !well_formed {
        bail!(
            "{what} {name:?} is not a service name: use 1 to 40 lowercase letters, digits and \
             single '-' between them, starting with a letter (e.g. \"stock\" or \"order-items\"); \
             nothing was written"
        );
    }
    let type_name = pascal(name);
    if RESERVED_NAMES.contains(&name) || RESERVED_TYPES.contains(&type_name.as_str()) {
        bail!(
            "{what} {name:?} is a name the generated code already uses (as {type_name:?} or as a \
             keyword): pick another one, e.g. \"{name}-service\"; nothing was written"
        );
    }
    Ok(())
}

/// "order-items" → "OrderItems": the aggregate's type name.
fn pascal(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// "order-items" → "ORDER_ITEMS": the saga's name.
fn upper(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

/// The saga-host repository: the one given, or the one this binary was built from.
fn sdk_root(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let missing = |root: &Path| -> Vec<&str> {
        SDK_FILES
            .iter()
            .copied()
            .filter(|file| !root.join(file).is_file())
            .collect()
    };
    match given {
        Some(root) => {
            let canonical = root.canonicalize().with_context(|| {
                format!(
                    "--sdk-root {}: no such directory; give a saga-host repository (the one \
                     with guest-sdk/, sdk/ and wit/); nothing was written",
                    root.display()
                )
            })?;
            let absent = missing(&canonical);
            if !absent.is_empty() {
                bail!(
                    "--sdk-root {} is not a saga-host repository: it has no {}; give the \
                     directory that holds guest-sdk/, sdk/ and wit/; nothing was written",
                    root.display(),
                    absent.join(", ")
                );
            }
            Ok(canonical)
        }
        None => {
            let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            match built.canonicalize() {
                Ok(root) if missing(&root).is_empty() => Ok(root),
                _ => bail!(
                    "this saga-host was built from {}, which no longer holds the SDKs and the WIT \
                     (guest-sdk/, sdk/, wit/): give a saga-host repository with --sdk-root PATH \
                     (or SAGA_HOST_SDK_ROOT); nothing was written",
                    built.display()
                ),
            }
        }
    }
}

/// A path the build scripts and sources can hold between quotes as it is.
fn plain_path(path: &Path) -> anyhow::Result<String> {
    let Some(text) = path.to_str() else {
        bail!(
            "{} is not UTF-8: the generated files could not name it",
            path.display()
        );
    };
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`') || c.is_control())
    {
        bail!(
            "the path {text} has a character ({c:?}) the generated build scripts would have to \
             escape: put the saga-host repository at a plainer path, or link it from one and give \
             that with --sdk-root; nothing was written"
        );
    }
    Ok(text.to_string())
}

/// The directory to write, absolute: refused when it exists and is not an empty directory.
fn check_target(dir: &Path) -> anyhow::Result<PathBuf> {
    match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let absolute = std::path::absolute(dir)
                .with_context(|| format!("{} cannot be made absolute", dir.display()))?;
            if absolute.file_name().is_none() {
                bail!("{} names no directory to create", dir.display());
            }
            Ok(absolute)
        }
        Err(error) => Err(error).with_context(|| format!("cannot look at {}", dir.display())),
        Ok(metadata) if !metadata.is_dir() => bail!(
            "{} exists and is not a directory: give another one with --dir DIR; nothing was \
             written",
            dir.display()
        ),
        Ok(_) => {
            let mut entries =
                fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: give a new or empty directory with --dir DIR \
                     (saga-host new never overwrites); nothing was written",
                    dir.display()
                );
            }
            dir.canonicalize()
                .with_context(|| format!("cannot resolve {}", dir.display()))
        }
    }
}

/// Writes the files into a staging directory beside `target`, then moves them in: a failure
/// leaves no half-written project.
fn write_project(target: &Path, files: &[File]) -> anyhow::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let base = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = parent.join(format!(".{base}.saga-host-new-{}", std::process::id()));
    let result = stage(&staging, files).and_then(|()| {
        if target.exists() {
            // An empty directory (perhaps the current one): move the entries into it.
            for entry in fs::read_dir(&staging)? {
                let entry = entry?;
                fs::rename(entry.path(), target.join(entry.file_name()))?;
            }
            fs::remove_dir(&staging)
        } else {
            fs::rename(&staging, target)
        }
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    Ok(result?)
}

fn stage(staging: &Path, files: &[File]) -> std::io::Result<()> {
    for file in files {
        let path = staging.join(file.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, &file.text)?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// `template` with each `{{key}}` replaced by its value.
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    text
}

impl Project {
    fn world(&self) -> &'static str {
        if self.orchestrator {
            "orchestrator"
        } else {
            "participant"
        }
    }

    fn language_name(&self) -> &'static str {
        match self.language {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }

    /// The source file the service is written in.
    fn source(&self) -> &'static str {
        match self.language {
            Language::Rust => "src/lib.rs",
            Language::Python => "app.py",
            Language::Js => "service.js",
        }
    }

    /// The language as `saga-host new` takes it.
    fn lang(&self) -> &'static str {
        match self.language {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::Js => "js",
        }
    }

    fn values(&self) -> Vec<(&'static str, String)> {
        let guide = match self.language {
            Language::Rust => "Writing a service in Rust",
            Language::Python | Language::Js => "Writing a service in Python or JavaScript",
        };
        vec![
            ("name", self.name.clone()),
            ("Name", pascal(&self.name)),
            ("NAME", upper(&self.name)),
            ("crate", self.name.replace('-', "_")),
            ("participant", self.participant.clone()),
            ("Participant", pascal(&self.participant)),
            ("world", self.world().to_string()),
            ("kind", self.world().to_string()),
            ("lang", self.lang().to_string()),
            ("Language", self.language_name().to_string()),
            ("source", self.source().to_string()),
            ("guide", guide.to_string()),
            ("sdk", self.sdk.clone()),
            ("saga_host", self.saga_host.clone()),
        ]
    }

    /// Every file but the Rust project's Cargo.lock, which is copied from the repository.
    fn files(&self) -> Vec<File> {
        use templates::*;
        let mut values = self.values();
        let (participant, orchestrator, build, gitignore, tool) = match self.language {
            Language::Rust => (
                RUST_PARTICIPANT,
                RUST_ORCHESTRATOR,
                RUST_BUILD,
                RUST_GITIGNORE,
                RUST_TOOL,
            ),
            Language::Python => (
                PYTHON_PARTICIPANT,
                PYTHON_ORCHESTRATOR,
                PYTHON_BUILD,
                PYTHON_GITIGNORE,
                PYTHON_TOOL,
            ),
            Language::Js => (
                JS_PARTICIPANT,
                JS_ORCHESTRATOR,
                JS_BUILD,
                JS_GITIGNORE,
                JS_TOOL,
            ),
        };
        values.push(("tool", render(tool, &values)));
        let (source, smoke, readme) = if self.orchestrator {
            (orchestrator, SMOKE_ORCHESTRATOR, README_ORCHESTRATOR)
        } else {
            (participant, SMOKE_PARTICIPANT, README_PARTICIPANT)
        };
        let file = |path: &'static str, template: &str| File {
            path,
            text: render(template, &values),
            executable: false,
        };
        let mut files = vec![
            file(self.source(), source),
            File {
                executable: true,
                ..file("build.sh", build)
            },
            file("README.md", readme),
            file(".gitignore", gitignore),
            file("tests/smoke.json", smoke),
        ];
        match self.language {
            Language::Rust => files.push(file("Cargo.toml", RUST_CARGO)),
            Language::Python => files.push(file("requirements.txt", PYTHON_REQUIREMENTS)),
            Language::Js => files.extend([
                file("build.mjs", JS_BUILD_MJS),
                file("package.json", JS_PACKAGE),
                file("package-lock.json", JS_LOCK),
            ]),
        }
        files
    }

    /// What `new` prints: what it wrote and what to do next.
    fn summary(&self, dir: &Path, files: &[File]) -> String {
        let paths: Vec<&str> = files.iter().map(|file| file.path).collect();
        let mut text = format!(
            "Wrote the {} {} \"{}\" (WIT world `{}`) to {}:\n  {}\n",
            self.language_name(),
            self.world(),
            self.name,
            self.world(),
            dir.display(),
            paths.join("  ")
        );
        if self.orchestrator {
            let participant = pascal(&self.participant);
            text += &format!(
                "POST /{0} runs the saga CREATE_{1}: its step invokes Reserve{2} (compensated by \
                 Release{2}) of the participant \"{3}\", which `saga-host new {4} {3}` writes.\n",
                self.name,
                upper(&self.name),
                participant,
                self.participant,
                self.lang(),
            );
        } else {
            text += &format!(
                "POST /{0} and GET /{0}/{{uuid}}; the commands Reserve{1} and Release{1}.\n",
                self.name,
                pascal(&self.name)
            );
        }
        text += &format!(
            "Next:\n  cd {}\n  ./build.sh          # builds {}.wasm\n  ./build.sh test     # \
             then runs tests/smoke.json with `saga-host test-run`\n  README.md says how to \
             serve and deploy it.\n",
            dir.display(),
            self.name
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(language: Language, orchestrator: bool) -> Project {
        Project {
            language,
            orchestrator,
            name: "order-items".into(),
            participant: "stock".into(),
            sdk: "/repo".into(),
            saga_host: "/repo/target/release/saga-host".into(),
        }
    }

    fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn every_template_is_filled_in() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            for orchestrator in [false, true] {
                for file in project(language, orchestrator).files() {
                    assert!(
                        !file.text.contains("{{"),
                        "{language:?} {}: a value is missing:\n{}",
                        file.path,
                        file.text
                    );
                    if file.path.ends_with(".json") {
                        serde_json::from_str::<serde_json::Value>(&file.text).unwrap_or_else(|e| {
                            panic!("{language:?} {} is not JSON: {e}", file.path)
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn the_smoke_tests_name_the_component_and_stub_the_participant() {
        let smoke = |orchestrator| {
            let files = project(Language::Rust, orchestrator).files();
            let file = files.iter().find(|f| f.path == "tests/smoke.json").unwrap();
            serde_json::from_str::<serde_json::Value>(&file.text).unwrap()
        };
        let participant = smoke(false);
        assert_eq!(participant["components"][0], "../order-items.wasm");
        let orchestrator = smoke(true);
        assert_eq!(orchestrator["components"][0], "../order-items.wasm");
        assert_eq!(orchestrator["stubs"]["ReserveStock"]["reply"], "success");
        assert_eq!(orchestrator["stubs"]["ReleaseStock"]["reply"], "success");
    }

    #[test]
    fn names_are_checked() {
        for good in ["stock", "order-items", "a1", "x-2y"] {
            check_name(good, "NAME").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "", "Stock", "1stock", "-stock", "stock-", "or--der", "my_stock", "a b", "ünï", "fn",
            "test", "request", "service", "number", "none",
        ] {
            assert!(check_name(bad, "NAME").is_err(), "{bad:?} was accepted");
        }
        assert!(check_name(&"a".repeat(41), "NAME").is_err());
        assert_eq!(pascal("order-items"), "OrderItems");
        assert_eq!(upper("order-items"), "ORDER_ITEMS");
    }

    /// The tools are pinned as the examples pin them: one version across the repository.
    #[test]
    fn the_pinned_tools_are_the_examples() {
        let repo = repository();
        let read = |path: &str| fs::read_to_string(repo.join(path)).unwrap();
        assert_eq!(
            templates::PYTHON_REQUIREMENTS,
            read("examples/python-tutorial/requirements.txt")
        );
        let example: serde_json::Value =
            serde_json::from_str(&read("examples/js-tutorial/package.json")).unwrap();
        let template: serde_json::Value =
            serde_json::from_str(&render(templates::JS_PACKAGE, &[])).unwrap();
        assert_eq!(template["devDependencies"], example["devDependencies"]);
        assert_eq!(
            templates::JS_LOCK.replace("\"{{name}}\"", "\"saga-host-js-tutorial\""),
            read("examples/js-tutorial/package-lock.json"),
            "host/templates/js/package-lock.json must be examples/js-tutorial's, renamed"
        );
    }

    #[test]
    fn this_repository_is_the_default_sdk_root() {
        let root = sdk_root(None).unwrap();
        assert_eq!(root, repository().canonicalize().unwrap());
        let error = sdk_root(Some(Path::new("/"))).unwrap_err().to_string();
        assert!(error.contains("is not a saga-host repository"), "{error}");
    }
}
