//! The binary as a user runs it: `crds` and `render`, with good and bad input.

use std::path::Path;
use std::process::{Command, Output};

fn operator(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunnel-operator"))
        .args(args)
        .env_remove("POD_NAMESPACE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn golden(case: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
        .join("input.yaml")
        .display()
        .to_string()
}

#[test]
fn crds_prints_the_committed_definitions() {
    let out = operator(&["crds"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml")).unwrap();
    assert!(text(&out.stdout) == committed, "`crds` prints other CRDs than deploy/crds.yaml holds");
}

#[test]
fn render_reads_several_files_and_standard_input_and_honours_the_namespace_flag() {
    let ingresses = golden("ingresses");
    let basic = std::fs::read_to_string(golden("basic")).unwrap();
    let out = operator(&["render", "-f", &ingresses, "-f", "-", "--namespace", "tunnels"], Some(&basic));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let named = |kind: &str, name: &str| {
        documents.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).cloned()
    };
    let deployment =
        named("Deployment", "clustertunnel-shared-cluster-tunnel").expect("the stdin tunnel's connector");
    assert_eq!(deployment["metadata"]["namespace"], "tunnels");
    let config =
        named("ConfigMap", "clustertunnel-shared-tunnel").expect("the file's tunnel's configuration");
    let toml = config["data"]["client.toml"].as_str().unwrap();
    assert!(toml.contains("http://app1-service.app-namespace-1.svc.cluster.local:80"), "{toml}");
    let ingress = named("Ingress", "app1-ingress").unwrap();
    assert_eq!(ingress["status"]["loadBalancer"]["ingress"][0]["hostname"], "tunnel.example.com");
    assert!(documents.iter().any(|d| d["kind"] == "Event" && d["reason"] == "NotAllowed"), "{stdout}");
}

#[test]
fn bad_input_exits_2_naming_the_file_the_object_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let both = write(
        "both.yaml",
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: Tunnel\nmetadata: {name: t, namespace: a}\n\
         spec:\n  newTunnel: {name: t}\n  existingTunnel: {name: t, secret: s}\n  server: {address: 'h:1', caSecret: ca, adminSecret: a}\n",
    );
    let typo =
        write("typo.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: 80}\n");
    // Rules of the schema that are not CEL: the API server refuses these as well.
    let bounds = write(
        "bounds.yaml",
        "apiVersion: tunnel-rs.github.io/v1alpha1\nkind: Tunnel\nmetadata: {name: t, namespace: a}\n\
         spec:\n  existingTunnel: {name: t, secret: Bad_Name}\n  server: {address: 'h:1', caSecret: ca}\n  replicas: 65\n",
    );
    let garbage = write("garbage.yaml", "kind: [\n");
    let missing = dir.path().join("missing.yaml").display().to_string();
    for (file, needles) in [
        (&both, vec!["Tunnel a/t is not valid", "exactly one of newTunnel and existingTunnel"]),
        (&typo, vec!["typo.yaml: document 1 (Service \"web\") is not a valid Service"]),
        (
            &bounds,
            vec![
                "Tunnel a/t is not valid",
                "spec.existingTunnel.secret: \"Bad_Name\" does not match",
                "spec.replicas: 65 is more than the maximum 64",
            ],
        ),
        (&garbage, vec!["garbage.yaml: not YAML"]),
        (&missing, vec!["missing.yaml"]),
    ] {
        let out = operator(&["render", "-f", file], None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(out.stdout.is_empty(), "{file}: nothing is printed for bad input");
        for needle in needles {
            assert!(stderr.contains(needle), "{file}: {stderr}");
        }
    }
    let out = operator(&["render"], None);
    assert_eq!(out.status.code(), Some(2), "no file is a usage error");
}

#[test]
fn a_reader_gone_a_full_disk_and_endless_input_each_end_with_an_exit_code_not_a_panic() {
    let binary = env!("CARGO_BIN_EXE_tunnel-operator");
    // A reader that went away (`| head`): nothing more to say, exit 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary).arg("crds").stdout(writer).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A full disk: exit 1, said on standard error.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(binary).arg("crds").stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot write the output"), "{}", text(&out.stderr));
    // Input without an end is refused at 64 MiB, not read into memory to its end.
    let out = operator(&["render", "-f", "/dev/zero"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/dev/zero: larger than 64 MiB"), "{}", text(&out.stderr));
}
