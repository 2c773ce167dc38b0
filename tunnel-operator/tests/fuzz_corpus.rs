//! Replays the operator's committed fuzz corpora and regression inputs through the same checks
//! its fuzz targets run (`fuzz/operator_checks.rs`).

#[path = "../../fuzz/operator_checks.rs"]
mod operator_checks;

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_checks() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, check) in operator_checks::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(!corpus.is_empty(), "the {target} corpus is empty: the replay would check nothing");
        for path in corpus.iter().chain(&inputs(&fuzz.join("regressions").join(target))) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its checks", path.display());
        }
    }
}
