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
/// an empty corpus fails (the replay would check nothing).
pub fn replay(fuzz: &Path, targets: &[Target<'_>]) {
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
