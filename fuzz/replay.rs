//! Replays committed fuzz corpora and regression inputs through their checks: shared by the
//! corpus replay tests of `tunnel-core` and `tunnel-operator`.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// A fuzz target by the name of its corpus directory, and its check.
pub type Target<'a> = (&'a str, fn(&[u8]));

/// Runs every input of `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET` through its check;
/// an empty corpus fails (the replay would check nothing). `targets` must list exactly the
/// fuzz targets whose file (`fuzz/fuzz_targets/TARGET.rs`) calls into `module`.
pub fn replay(fuzz: &Path, module: &str, targets: &[Target<'_>]) {
    check_listed(fuzz, module, targets);
    for (target, check) in targets {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(!corpus.is_empty(), "the {target} corpus is empty: the replay would check nothing");
        for path in corpus.iter().chain(&inputs(&fuzz.join("regressions").join(target))) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its checks", path.display());
        }
    }
}

/// The modules of checks a fuzz target uses one of, each replayed by a test of its own.
const MODULES: [&str; 2] = ["checks", "operator_checks"];

/// Fails unless `targets` names exactly the fuzz targets that call into `module`, each built by
/// `fuzz/Cargo.toml`, and every corpus and regression directory is some target's: a target
/// left out of the list, or inputs filed under a misspelt name, would never be replayed.
fn check_listed(fuzz: &Path, module: &str, targets: &[Target<'_>]) {
    let stem = |p: &PathBuf| p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    let files: Vec<PathBuf> = inputs(&fuzz.join("fuzz_targets"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    let all: Vec<String> = files.iter().map(stem).collect();
    let declares =
        |p: &PathBuf, module: &str| std::fs::read_to_string(p).unwrap().contains(&format!("\nmod {module};"));
    for file in &files {
        let modules = MODULES.iter().filter(|m| declares(file, m)).count();
        assert_eq!(modules, 1, "{} must use exactly one of {MODULES:?}", file.display());
    }
    let mut calling: Vec<String> = files.iter().filter(|p| declares(p, module)).map(stem).collect();
    calling.sort();
    let mut listed: Vec<String> = targets.iter().map(|(name, _)| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(listed, calling, "the targets listed for {module} differ from the fuzz targets calling it");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml builds no target {name}");
    }
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz.join(kind)).unwrap().filter_map(Result::ok) {
            let name = dir.file_name().to_string_lossy().into_owned();
            assert!(all.contains(&name), "fuzz/{kind}/{name} belongs to no fuzz target");
        }
    }
}
