//! Offline schema validation of everything the operator renders and ships: the golden outputs
//! and `deploy/` with its examples, checked by `kubernetes-validate` (PyPI; `.ci/run` installs it) against the
//! Kubernetes 1.33 schemas, strictly (unknown fields fail).

use std::path::{Path, PathBuf};

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tunnel-operator/tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path().join("expected.yaml"))
        .collect();
    for dir in ["deploy", "deploy/examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
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
    let kinds = [
        "configmap",
        "deployment",
        "event",
        "ingress",
        "customresourcedefinition",
        "clusterrole",
        "role",
        "namespace",
    ];
    for kind in kinds {
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

#[test]
fn every_example_renders_and_reads_like_its_golden_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(root.join("deploy/examples")).unwrap() {
        let path = entry.unwrap().path();
        let mut cluster = tunnel_operator::objects::Cluster::default();
        let skipped = cluster.load_yaml(&std::fs::read_to_string(&path).unwrap(), "example").unwrap();
        assert!(skipped.is_empty(), "{}: {skipped:?}", path.display());
        cluster.check().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The example is its golden input without the fields a cluster sets.
        let golden =
            root.join("tunnel-operator/tests/golden").join(path.file_stem().unwrap()).join("input.yaml");
        let stripped: Vec<String> = std::fs::read_to_string(golden)
            .unwrap()
            .lines()
            .filter(|l| {
                !["  uid: ", "  generation: ", "  creationTimestamp: "].iter().any(|p| l.starts_with(p))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            stripped.concat(),
            "{} drifted from its golden input",
            path.display()
        );
    }
}
