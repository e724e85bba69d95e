//! No image is built here (no container engine), so the Dockerfiles' non-negotiables are
//! checked as text: a separate build stage building the one package with `--locked`, a
//! runtime stage that runs as a non-root user and executes nothing at build time, and
//! paths that agree with what the operator mounts.

use std::path::{Path, PathBuf};

use moltbot_operator::build::{CONFIG_DIR, CONFIG_FILE, DATA_DIR};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator is in the workspace")
        .to_path_buf()
}

/// A Dockerfile's instructions as (KEYWORD, arguments), comments dropped and continued
/// lines joined.
fn instructions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (keyword, arguments) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            (keyword.to_ascii_uppercase(), arguments.trim().to_string())
        })
        .collect()
}

/// The arguments of every `keyword` instruction in `stage` (a slice of instructions).
fn all<'a>(stage: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

/// The workspace's `rust-version`, e.g. `1.94`.
fn rust_version() -> String {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("rust-version")?.trim();
            Some(
                value
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"')
                    .to_string(),
            )
        })
        .expect("the workspace sets rust-version")
}

/// Checks one Dockerfile and returns its runtime stage.
fn check(package: &str, binary: &str) -> Vec<(String, String)> {
    let path = repo()
        .join(package.trim_start_matches("moltbot-"))
        .join("Dockerfile");
    let instructions = instructions(&path);
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "{path:?}: multi-stage");
    let last = *stages.last().unwrap();
    let (build, runtime) = instructions.split_at(last);

    let first_from = &build[0].1;
    assert!(
        first_from.starts_with(&format!("rust:{}-", rust_version())),
        "{path:?}: the builder's Rust is the workspace's rust-version: {first_from}"
    );
    assert!(
        first_from.ends_with(" AS build"),
        "{path:?}: stage named build"
    );
    let cargo = all(build, "RUN")
        .into_iter()
        .find(|run| run.contains("cargo build"))
        .unwrap_or_else(|| panic!("{path:?}: the build stage runs cargo build"));
    for flag in ["--locked", "--release", &format!("-p {package}")] {
        assert!(cargo.contains(flag), "{path:?}: cargo build {flag}");
    }

    let base = &runtime[0].1;
    assert!(
        base.starts_with("gcr.io/distroless/") && base.ends_with(":nonroot"),
        "{path:?}: a minimal non-root runtime base: {base}"
    );
    assert!(
        all(runtime, "RUN").is_empty(),
        "{path:?}: the runtime stage has no shell to run anything"
    );
    assert_eq!(
        all(runtime, "USER"),
        ["65532:65532"],
        "{path:?}: runs as the non-root user"
    );
    let installed = format!("/usr/local/bin/{binary}");
    assert_eq!(
        all(runtime, "ENTRYPOINT"),
        [format!("[\"{installed}\"]").as_str()],
        "{path:?}: the binary is the entrypoint (exec form)"
    );
    assert!(
        all(runtime, "COPY")
            .iter()
            .any(|copy| copy.starts_with("--from=build") && copy.ends_with(&installed)),
        "{path:?}: the binary comes from the build stage"
    );
    runtime.to_vec()
}

#[test]
fn the_gateway_image_is_multi_stage_non_root_and_reads_what_the_operator_mounts() {
    let runtime = check("moltbot-gateway", "moltbot-gateway");
    assert_eq!(
        all(&runtime, "CMD"),
        [format!("[\"--config\", \"{CONFIG_DIR}/{CONFIG_FILE}\"]").as_str()]
    );
    assert!(
        all(&runtime, "COPY")
            .iter()
            .any(|copy| copy.contains("--chown=65532:65532") && copy.ends_with(DATA_DIR)),
        "the data directory belongs to the gateway's user"
    );
    assert!(
        all(&runtime, "ENV")
            .iter()
            .all(|env| !env.contains("LISTEN")),
        "the listen address is the config's"
    );
}

#[test]
fn the_operator_image_is_multi_stage_and_non_root() {
    check("moltbot-operator", "moltbot-operator");
}

#[test]
fn the_build_context_leaves_out_build_output_but_not_sources() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(
            patterns.contains(&needed),
            ".dockerignore leaves out {needed}"
        );
    }
    for pattern in &patterns {
        for source in ["gateway", "migrations", "Cargo", "src", "crds", "protocol"] {
            assert!(
                !pattern.contains(source),
                ".dockerignore must keep {source}: {pattern}"
            );
        }
    }
}

#[test]
fn the_parser_joins_continued_lines_and_drops_comments() {
    let dir = std::env::temp_dir().join(format!("moltbot-dockerfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("Dockerfile");
    std::fs::write(
        &path,
        "# syntax=docker/dockerfile:1\nFROM a AS build\n# note\nRUN one \\\n    two\n\nuser 1:1\n",
    )
    .unwrap();
    let parsed = instructions(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        parsed,
        [
            ("FROM".to_string(), "a AS build".to_string()),
            ("RUN".to_string(), "one  two".to_string()),
            ("USER".to_string(), "1:1".to_string()),
        ]
    );
}
