//! `ferry new`: writes a plugin skeleton in Rust, Python, JavaScript or C that
//! builds with one command (`./build.sh`) and passes the smoke test it comes
//! with (`ferry check NAME.wasm --smoke smoke.json`). The WIT and the build
//! scripts are the repository's own, embedded at compile time, so a
//! skeleton always matches the host that made it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// The one WIT source, as the host was built against it.
const WIT: &str = include_str!("../../../wit/plugin.wit");

const PYTHON_BUILD: &str = include_str!("../../../sdk/python/build.sh");
const JS_BUILD: &str = include_str!("../../../sdk/js/build.sh");
const JS_PACKAGE: &str = include_str!("../../../sdk/js/package.json");
const JS_LOCK: &str = include_str!("../../../sdk/js/package-lock.json");
const C_BUILD: &str = include_str!("../../../sdk/c/build.sh");
const C_JSON_H: &str = include_str!("../../../sdk/c/ferry_json.h");
const C_JSON_C: &str = include_str!("../../../sdk/c/ferry_json.c");

const RUST_CARGO: &str = include_str!("scaffold/rust_cargo.toml");
const RUST_LIB: &str = include_str!("scaffold/rust_lib.rs");
const RUST_BUILD: &str = include_str!("scaffold/rust_build.sh");
const PYTHON_APP: &str = include_str!("scaffold/app.py");
const JS_APP: &str = include_str!("scaffold/app.js");
const C_APP: &str = include_str!("scaffold/app.c");
const SMOKE: &str = include_str!("scaffold/smoke.json");
const README: &str = include_str!("scaffold/README.md");
const GITIGNORE: &str = include_str!("scaffold/gitignore");

/// Where the SDK was when this binary was built: a Rust skeleton depends
/// on it by path unless `--sdk` says otherwise.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

/// One file of a skeleton: its path inside the folder, its text, and
/// whether it is a script to run.
struct File {
    path: &'static str,
    text: String,
    executable: bool,
}

fn file(path: &'static str, text: impl Into<String>) -> File {
    File {
        path,
        text: text.into(),
        executable: path.ends_with(".sh"),
    }
}

/// Writes the skeleton of plugin `name` in `lang` into `dir` (default
/// `./NAME`), which must not exist or be empty.
pub fn new(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    if !crate::core::names::valid_service_name(name) {
        bail!(
            "`{name}` is not a service name: lowercase letters, digits, `-` and `_`, starting with a letter or digit"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not empty; pick another folder with --dir",
            dir.display()
        );
    }
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    let (language, toolchain_note, docs) = match lang {
        Lang::Rust => (
            "Rust",
            " (needs the wasm32-wasip2 target, which it adds)",
            "The Rust SDK: `sdk/README.md` in the Ferry repository.",
        ),
        Lang::Python => (
            "Python",
            "; the first run installs the pinned componentize-py into .tools/ (or $FERRY_TOOLS)",
            "Writing plugins in Python: `sdk/python/README.md` in the Ferry repository.",
        ),
        Lang::Js => (
            "JavaScript",
            "; the first run installs the pinned componentize-js into .tools/ (or $FERRY_TOOLS)",
            "Writing plugins in JavaScript: `sdk/js/README.md` in the Ferry repository.",
        ),
        Lang::C => (
            "C",
            "; the first run installs Debian's clang 14 and wasi-libc when missing, and the pinned wit-bindgen into .tools/ (or $FERRY_TOOLS)",
            "Writing plugins in C: `sdk/c/README.md` in the Ferry repository.",
        ),
    };
    let lang_word = match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
        Lang::C => "c",
    };
    let readme = fill(README)
        .replace("{{language}}", language)
        .replace("{{lang}}", lang_word)
        .replace("{{toolchain_note}}", toolchain_note)
        .replace("{{docs}}", &format!("\n{docs}\n"));
    let mut files = vec![
        file("README.md", readme),
        file("smoke.json", SMOKE),
        file(".gitignore", GITIGNORE),
    ];
    match lang {
        Lang::Rust => {
            let sdk = sdk_path(sdk)?;
            files.push(file(
                "Cargo.toml",
                fill(RUST_CARGO).replace("{{sdk}}", &sdk.display().to_string()),
            ));
            files.push(file("src/lib.rs", fill(RUST_LIB)));
            files.push(file("build.sh", fill(RUST_BUILD)));
        }
        Lang::Python => {
            files.push(file("app.py", fill(PYTHON_APP)));
            files.push(file("build.sh", PYTHON_BUILD));
            files.push(file("wit/plugin.wit", WIT));
        }
        Lang::Js => {
            files.push(file("app.js", fill(JS_APP)));
            files.push(file("build.sh", JS_BUILD));
            files.push(file("package.json", JS_PACKAGE));
            files.push(file("package-lock.json", JS_LOCK));
            files.push(file("wit/plugin.wit", WIT));
        }
        Lang::C => {
            files.push(file("app.c", fill(C_APP)));
            files.push(file("build.sh", C_BUILD));
            files.push(file("ferry_json.h", C_JSON_H));
            files.push(file("ferry_json.c", C_JSON_C));
            files.push(file("wit/plugin.wit", WIT));
        }
    }
    for File {
        path,
        text,
        executable,
    } in files
    {
        write(&dir.join(path), &text, executable)?;
    }
    println!(
        "created {language} plugin `{name}` in {}; build it with `./build.sh` there, then run `ferry check {name}.wasm --smoke smoke.json`",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The SDK a Rust skeleton depends on, as an absolute path.
fn sdk_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = given.unwrap_or_else(|| PathBuf::from(BUILT_SDK));
    let path = path.canonicalize().with_context(|| {
        format!(
            "the Ferry SDK is not at {}; pass --sdk with the path of the repository's sdk/ folder",
            path.display()
        )
    })?;
    if !path.join("Cargo.toml").is_file() {
        bail!("{} holds no Cargo.toml: not the Ferry SDK", path.display());
    }
    Ok(path)
}

fn write(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}
