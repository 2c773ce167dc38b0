//! Replays the operator's committed fuzz corpora and regression inputs through the same checks
//! its fuzz targets run (`fuzz/operator_checks.rs`).

#[path = "../../fuzz/operator_checks.rs"]
mod operator_checks;
#[path = "../../fuzz/replay.rs"]
mod replay;

#[test]
fn every_corpus_and_regression_input_passes_its_checks() {
    replay::replay(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz"),
        "operator_checks",
        operator_checks::TARGETS,
    );
}
