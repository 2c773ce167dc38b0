//! Replays every committed fuzz corpus and regression input through the same checks the fuzz
//! targets run, so CI catches a regression in seconds without a fuzzing run.

#[path = "../../fuzz/checks.rs"]
mod checks;
#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn every_corpus_and_regression_input_passes_its_checks() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    replay::replay(&fuzz, "checks", checks::TARGETS);
}
