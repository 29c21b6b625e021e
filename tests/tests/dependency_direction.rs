//! Architecture invariant: dependencies between workspace crates point one
//! way. registry depends on no workspace crate; providers and hooks depend
//! on registry and never on each other; agent depends on registry and
//! providers; cli may depend on all.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions may unwrap too"
)]
use std::collections::BTreeSet;
use std::path::Path;

fn workspace_dependencies(crate_dir: &str) -> BTreeSet<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", manifest.display()));
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .into_iter()
        .filter_map(|section| manifest.get(section).and_then(toml::Value::as_table))
        .flat_map(|table| table.keys().cloned())
        .filter(|name| name.starts_with("deputy-"))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn registry_depends_on_no_workspace_crate() {
    assert_eq!(workspace_dependencies("crates/registry"), set(&[]));
}

#[test]
fn providers_and_hooks_depend_on_registry_only() {
    assert_eq!(
        workspace_dependencies("crates/providers"),
        set(&["deputy-registry"])
    );
    assert_eq!(
        workspace_dependencies("crates/hooks"),
        set(&["deputy-registry"])
    );
}

#[test]
fn agent_depends_on_registry_and_providers() {
    assert_eq!(
        workspace_dependencies("crates/agent"),
        set(&["deputy-providers", "deputy-registry"])
    );
}

#[test]
fn every_crate_is_checked() {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut found: Vec<String> = std::fs::read_dir(&crates_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    // A new crate needs a rule above before it joins the workspace.
    assert_eq!(found, ["agent", "cli", "hooks", "providers", "registry"]);
}
