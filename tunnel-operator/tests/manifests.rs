//! Offline schema validation of everything the operator renders and ships: the golden outputs
//! and `deploy/`, checked by `kubernetes-validate` (PyPI; `.ci/run` installs it) against the
//! Kubernetes 1.33 schemas, strictly (unknown fields fail).

use std::path::{Path, PathBuf};

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tunnel-operator/tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path().join("expected.yaml"))
        .collect();
    for entry in std::fs::read_dir(root.join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn rendered_and_shipped_manifests_pass_strict_schema_validation() {
    let files = manifests();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is not installed (pip install kubernetes-validate; .ci/run does)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !report.contains("ERROR"), "{report}");
    for kind in ["configmap", "deployment", "event", "ingress", "customresourcedefinition"] {
        assert!(report.contains(&format!("passed for resource {kind}/")), "no {kind} was checked:\n{report}");
    }
    // Kinds without a bundled schema are only warned about: they must be ours or the Gateway API's.
    for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            line.contains("tunnel-rs.github.io/v1alpha1") || line.contains("gateway.networking.k8s.io/v1"),
            "a kind nobody checks: {line}"
        );
    }
}
