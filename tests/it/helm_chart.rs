//! The Helm chart (`charts/ddm-update-operator`), the GitOps wiring (`examples/flux`,
//! `examples/argocd`) and the `Dockerfile`.
//!
//! # Helm
//!
//! Helm's own engine, from the PyPI package `helm-python-sdk` (its wheel bundles `libhelm_c`,
//! Helm's Go SDK behind a C ABI). `tests/helm/setup.sh` makes a virtual environment with it under
//! `target/helm-venv` once (cached); `tests/helm/helm.py` takes a batch of requests (render,
//! lint, metadata, install, uninstall) as JSON and answers in JSON. Rendering checks the values
//! against `values.schema.json` exactly as `helm install` does. A missing Python or PyPI is a
//! failure that says why, never a skip.
//!
//! # What the tests pin
//!
//! * `crds_in_the_chart_are_the_generated_ones`: the chart's `crds/` are byte for byte the
//!   repository's `crds/` and what the types generate (`UPDATE_CRDS=1 cargo test crds_` rewrites
//!   both).
//! * `default_values_render_one_locked_down_replica`: the objects the defaults (and the HMAC
//!   Secret, which the chart requires unless `ddm.insecureNoHmac`) render (no
//!   ServiceMonitor; a NetworkPolicy with two port rules: the device port from NanoMDM's and
//!   the ingress controller's namespaces, the admin port from the monitoring namespace), one
//!   replica, `Recreate`, non-root uid 65532, read-only root, no capabilities, RuntimeDefault
//!   seccomp, two container ports (`http` for devices, `admin`), probes on `/healthz` and
//!   `/readyz` of the admin port, the downward-API env the binary reads, the exact args,
//!   Services selecting the pod (the metrics Service on the admin port).
//! * `rbac_is_the_least_privilege_set`: the ClusterRole, the token-review ClusterRole (the admin
//!   API's TokenReview and SubjectAccessReview, cluster-wide even with `watchNamespace`) and the
//!   leader-election Role are exactly the expected rules (the real-server test shows the
//!   operator needs every one of them).
//! * `overrides_render_their_flags_and_mounts`: realistic overrides (NanoMDM and HMAC secrets,
//!   enrollment upstream or profile, catalog roots and inventory, an existing claim, no
//!   persistence, ServiceMonitor and NetworkPolicy, `ddm.insecureNoHmac`); every file flag
//!   points into a mounted Secret or ConfigMap item; `--insecure-no-hmac` only where asked for,
//!   and then no Secret mounted.
//! * `the_log_format_is_json_by_default_and_text_on_request`: `--log-format=json` unless
//!   `logFormat: text`.
//! * `every_rendered_flag_is_one_the_binary_accepts`: the flags of every case against
//!   `ddm-update-operator run --help`.
//! * `invalid_values_fail_with_a_clear_message`: the schema (and the template's own checks)
//!   refuse bad values, naming the field; neither `ddm.hmacSecret` (with its receive key) nor
//!   `ddm.insecureNoHmac` is refused, as the binary would refuse to start.
//! * `chart_lints_clean`: `helm lint --strict` for every case.
//! * `dockerfile_agrees_with_the_chart`: user, port, entrypoint, stop signal, the files the build
//!   needs.
//! * `argocd_health_check_follows_the_conditions`: the Lua health check in `argocd-cm.yaml`, run
//!   by `lua5.1` (Argo CD uses gopher-lua, Lua 5.1), on statuses built by the operator's own
//!   condition code.
//! * `gitops_wiring_points_at_this_repository`: the Flux and Argo CD objects name paths that
//!   exist, sources that are defined, and chart values the schema accepts.
//! * `chart_on_a_real_api_server`: on a real kube-apiserver 1.20 of its own (see below): the
//!   chart's CRDs, the rendered objects of every case applied with `kubectl apply
//!   --dry-run=server` (the ServiceMonitor refused for exactly its missing CRD), a real
//!   `helm install` (with `skip_crds` on 1.20, whose server-side apply refuses CEL rules: that
//!   refusal is pinned too), then the operator binary run as the chart's pod would run it — the
//!   installed Deployment's args and env, its Secret and ConfigMap files, and the token of the
//!   chart's ServiceAccount, so only the chart's RBAC — until `examples/gitops` is Ready, a ring
//!   is retired (generated target deleted), an invalid and a suspended policy are reported and a
//!   policy is deleted through its finalizer, with no request forbidden; HMAC, the NanoMDM API
//!   key and the enrollment gate (its path, CA bundle and profile) work from the mounted files;
//!   /metrics answers; the Argo CD health check on the statuses the operator
//!   wrote; `kubectl auth can-i` for what the ServiceAccount must not do; the README's
//!   `argocd-cm` patch command; `helm uninstall` keeping the data claim.
//!
//! # The API server
//!
//! `chart_on_a_real_api_server` starts `tests/k8s/apiserver.sh` on ports of its own
//! (46443/42379, kubeconfig `target/kubeconfig-helm`), with the `OwnerReferencesPermission
//! Enforcement` admission plugin (as OpenShift runs), and stops it at the end. It does not use
//! `KUBECONFIG`: the operator it runs watches every namespace and would reconcile the objects of
//! the other Kubernetes tests on a shared server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ddm_update_operator::api::condition_types::{COMPLIANT, READY, RESOLVED, SYNCED};
use ddm_update_operator::controller::conditions::{Desired, conditions};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::helm::{CHART, helm, merge};
use crate::support::process::free_ports;
use crate::support::yaml_files;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_ddm-update-operator");
const RELEASE: &str = "ddm-update-operator";
const NAMESPACE: &str = "ddm-system";
const DATA_DIR: &str = "/var/lib/ddm-update-operator";
const APISERVER_PORT: &str = "46443";
const ETCD_PORT: &str = "42379";
const CATALOG: &str = "tests/fixtures/gdmf/pmv-2026-08-22.json";

// ---------------------------------------------------------------------------------------------
// Helm's engine
// ---------------------------------------------------------------------------------------------

/// The objects of one rendering.
struct Rendered {
    objects: Vec<Value>,
    notes: String,
}

impl Rendered {
    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for object in &self.objects {
            *kinds.entry(text(&object["kind"])).or_default() += 1;
        }
        kinds
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "exactly one {kind}: {:?}", self.kinds());
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", self.names()))
    }

    fn names(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| format!("{}/{}", text(&o["kind"]), text(&o["metadata"]["name"])))
            .collect()
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn container(&self) -> &Value {
        let containers = self.deployment()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    /// The value of `--name=VALUE` (None when absent; panics when given twice).
    fn flag(&self, name: &str) -> Option<String> {
        let prefix = format!("--{name}=");
        let values: Vec<String> = self
            .args()
            .iter()
            .filter_map(|a| a.strip_prefix(&prefix).map(str::to_string))
            .collect();
        assert!(values.len() <= 1, "--{name} given twice: {values:?}");
        values.into_iter().next()
    }
}

fn render_result(values: &Value) -> Result<Rendered, String> {
    let results = helm(vec![render_request(values)]);
    parse_rendered(&results[0])
}

fn render_request(values: &Value) -> Value {
    json!({"op": "render", "values": values, "release": RELEASE, "namespace": NAMESPACE})
}

fn parse_rendered(result: &Value) -> Result<Rendered, String> {
    if result["ok"] != true {
        return Err(format!(
            "{}: {}",
            text(&result["error"]),
            text(&result["message"])
        ));
    }
    Ok(Rendered {
        objects: result["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .map(|o| o["object"].clone())
            .collect(),
        notes: text(&result["notes"]),
    })
}

fn render(case: &str, values: &Value) -> Rendered {
    render_result(values).unwrap_or_else(|e| panic!("case {case} does not render: {e}"))
}

/// The Secret with NanoMDM's HMAC keys: the one value a Kubernetes install cannot do without.
const HMAC_SECRET: &str = "nanomdm-dm-hmac";

/// `values` over the HMAC Secret (the operator refuses to start without it or
/// `ddm.insecureNoHmac`, so the chart refuses to render without either).
fn with_hmac(values: Value) -> Value {
    let mut merged = json!({"ddm": {"hmacSecret": {"name": HMAC_SECRET}}});
    merge(&mut merged, values);
    merged
}

/// Every case, rendered in one batch.
fn render_cases() -> Vec<(&'static str, Value, Rendered)> {
    let cases = cases();
    let results = helm(cases.iter().map(|(_, v)| render_request(v)).collect());
    cases
        .into_iter()
        .zip(results)
        .map(|((name, values), result)| {
            let rendered = parse_rendered(&result)
                .unwrap_or_else(|e| panic!("case {name} does not render: {e}"));
            (name, values, rendered)
        })
        .collect()
}

/// The defaults and realistic overrides.
fn cases() -> Vec<(&'static str, Value)> {
    vec![
        // The defaults and the one required value.
        ("defaults", with_hmac(json!({}))),
        // Unsigned DDM requests taken, on purpose: no Secret at all.
        ("insecure-no-hmac", json!({"ddm": {"insecureNoHmac": true}})),
        (
            "nanomdm-and-hmac",
            json!({
                "image": {"repository": "registry.example.com/platform/ddm-update-operator",
                          "tag": "0.1.0-rc1", "pullPolicy": "Always"},
                "imagePullSecrets": [{"name": "registry-credentials"}],
                "ddm": {"hmacSecret": {"name": HMAC_SECRET}},
                "nanomdm": {"url": "https://nanomdm.example.com",
                            "apiKeySecret": {"name": "nanomdm-api", "key": "key"}},
            }),
        ),
        (
            "enrollment-upstream",
            with_hmac(json!({
                "enrollment": {
                    "path": "/mdm/enroll",
                    "upstream": "https://mdm.example.com/mdm/enroll",
                    "caBundle": {"configMapName": "apple-device-ca"},
                    "betaTokenSecret": {"name": "apple-seeding"},
                },
                "service": {"enroll": {"type": "LoadBalancer", "port": 443,
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}}},
            })),
        ),
        (
            "enrollment-profile",
            with_hmac(
                json!({"enrollment": {"profile": {"secretName": "enrollment-profile"}, "allowUnsigned": true}}),
            ),
        ),
        (
            "catalog-roots-and-inventory",
            with_hmac(json!({
                "catalog": {"refresh": "12h", "roots": {"secretName": "catalog-roots", "key": "ca.pem"}},
                "inventory": {"configMapName": "fleet-inventory"},
                "assumeSupervised": true,
                "concurrency": 8,
                "logLevel": "info,ddm_update_operator=debug",
            })),
        ),
        (
            "existing-claim",
            with_hmac(json!({"persistence": {"existingClaim": "ddm-data"}})),
        ),
        (
            "no-persistence",
            with_hmac(json!({"persistence": {"enabled": false}})),
        ),
        (
            "monitoring-and-network-policy",
            with_hmac(json!({
                "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
                "networkPolicy": {
                    "enabled": true,
                    "device": {
                        "nanomdm": {"enabled": true,
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mdm"}},
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nanomdm"}}},
                        "ingressController": {"enabled": false},
                    },
                    "admin": {
                        "extraFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dashboards"}}}],
                    },
                    "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443, "protocol": "TCP"}]}],
                },
                "persistence": {"storageClassName": "fast-ssd", "size": "5Gi"},
            })),
        ),
    ]
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default()
}

/// A Secret or ConfigMap item behind a file path in the container: (kind, name, key).
fn file_behind(rendered: &Rendered, path: &str) -> (String, String, String) {
    let pod = &rendered.deployment()["spec"]["template"]["spec"];
    let mount = rendered.container()["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| {
            path.strip_prefix(text(&m["mountPath"]).as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .unwrap_or_else(|| panic!("{path} is under no volumeMount"));
    assert_eq!(mount["readOnly"], true, "{path}: its mount is read-only");
    let file = &path[text(&mount["mountPath"]).len() + 1..];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    let (kind, name, source) = if volume["secret"].is_object() {
        (
            "Secret",
            text(&volume["secret"]["secretName"]),
            &volume["secret"],
        )
    } else if volume["configMap"].is_object() {
        (
            "ConfigMap",
            text(&volume["configMap"]["name"]),
            &volume["configMap"],
        )
    } else {
        panic!("{path}: volume {volume} is neither a Secret nor a ConfigMap");
    };
    let item = source["items"]
        .as_array()
        .expect("items: only the needed keys are mounted")
        .iter()
        .find(|i| i["path"] == file)
        .unwrap_or_else(|| panic!("{path}: no item {file} in {volume}"));
    (kind.to_string(), name, text(&item["key"]))
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

#[test]
fn crds_in_the_chart_are_the_generated_ones() {
    let root = Path::new(ROOT);
    let generated = ddm_update_operator::api::crd_files(true).expect("the CRDs render");
    if std::env::var_os("UPDATE_CRDS").is_some() {
        for (name, yaml) in &generated {
            std::fs::write(root.join(CHART).join("crds").join(name), yaml)
                .expect("the chart's crds/ is writable");
        }
    }
    let list = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let in_chart = list(&root.join(CHART).join("crds"));
    assert_eq!(
        in_chart,
        list(&root.join("crds")),
        "the chart's crds/ holds other files than crds/"
    );
    assert_eq!(
        in_chart,
        generated.iter().map(|(n, _)| n.clone()).collect(),
        "the chart's crds/ differ from the generated set"
    );
    for (name, yaml) in &generated {
        let chart = std::fs::read(root.join(CHART).join("crds").join(name)).expect("readable");
        let repo = std::fs::read(root.join("crds").join(name)).expect("readable");
        assert!(
            chart == repo && chart == yaml.as_bytes(),
            "{CHART}/crds/{name} differs from crds/{name} or from the types: \
             run `UPDATE_CRDS=1 cargo test crds_` and commit both"
        );
    }
    // Helm sees exactly these files as the chart's CRDs.
    let metadata = &helm(vec![json!({"op": "metadata"})])[0];
    let crds: BTreeSet<String> = metadata["crds"]
        .as_array()
        .expect("crds")
        .iter()
        .map(|c| {
            let filename = text(&c["filename"]);
            filename.rsplit('/').next().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(crds, in_chart);
}

#[test]
fn default_values_render_one_locked_down_replica() {
    let rendered = render("defaults", &with_hmac(json!({})));
    let kinds = rendered.kinds();
    let expected: BTreeMap<String, usize> = [
        ("ClusterRole", 2),
        ("ClusterRoleBinding", 2),
        ("Deployment", 1),
        ("NetworkPolicy", 1),
        ("PersistentVolumeClaim", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 3),
        ("ServiceAccount", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(
        kinds, expected,
        "the defaults render a NetworkPolicy and no ServiceMonitor"
    );
    for object in &rendered.objects {
        let cluster_scoped =
            ["ClusterRole", "ClusterRoleBinding"].contains(&text(&object["kind"]).as_str());
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            (!cluster_scoped).then_some(NAMESPACE),
            "{} carries the release namespace",
            text(&object["kind"])
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{object}"
        );
    }

    let deployment = rendered.deployment();
    let metadata = &helm(vec![json!({"op": "metadata"})])[0];
    let app_version = text(&metadata["chart"]["appVersion"]);
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion is the crate's version"
    );
    assert_eq!(deployment["metadata"]["name"], RELEASE);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    let pod = &deployment["spec"]["template"]["spec"];
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_object().expect("matchLabels") {
        assert_eq!(
            &deployment["spec"]["template"]["metadata"]["labels"][key], value,
            "the pod carries its selector's labels"
        );
    }
    assert_eq!(pod["serviceAccountName"], RELEASE);
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["runAsGroup"], 65532);
    assert_eq!(
        security["fsGroup"], 65532,
        "the volume is writable by the user"
    );
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");

    let container = rendered.container();
    assert_eq!(
        container["image"],
        format!("ddm-update-operator:{app_version}")
    );
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert!(
        container["command"].is_null(),
        "the image's ENTRYPOINT is the binary"
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        container["ports"],
        json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "admin", "containerPort": 9090, "protocol": "TCP"}
        ]),
        "the device side and the admin side"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "admin"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "admin"})
    );
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (text(&e["name"]), e.clone()))
        .collect();
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(env["RUST_LOG"]["value"], "info");
    assert_eq!(
        rendered.args(),
        [
            "run",
            "--listen=0.0.0.0:8080",
            "--admin-listen=0.0.0.0:9090",
            "--data-dir=/var/lib/ddm-update-operator",
            "--log-format=json",
            "--base-path=/ddm/",
            "--catalog=https://gdmf.apple.com/v2/pmv",
            "--catalog-refresh=24h",
            "--dm-receive-key-file=/etc/ddm-update-operator/hmac/dm-receive-key",
            "--dm-send-key-file=/etc/ddm-update-operator/hmac/dm-send-key",
            "--concurrency=4",
        ],
        "no --manifests: Kubernetes mode; the HMAC keys and no optional flag by default"
    );
    let mounts: BTreeMap<String, String> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (text(&m["mountPath"]), text(&m["name"])))
        .collect();
    assert_eq!(
        mounts,
        [
            (DATA_DIR, "data"),
            ("/tmp", "tmp"),
            ("/etc/ddm-update-operator/hmac", "hmac"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    let claim = format!("{RELEASE}-data");
    assert_eq!(volumes[0]["persistentVolumeClaim"]["claimName"], claim);
    assert_eq!(volumes[1]["emptyDir"], json!({}));

    let pvc = rendered.named("PersistentVolumeClaim", &claim);
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "the device store survives helm uninstall"
    );
    assert!(pvc["spec"]["storageClassName"].is_null());

    let services: BTreeMap<String, &Value> = rendered
        .all("Service")
        .into_iter()
        .map(|s| (text(&s["metadata"]["name"]), s))
        .collect();
    assert_eq!(
        services.keys().cloned().collect::<Vec<_>>(),
        [
            RELEASE.to_string(),
            format!("{RELEASE}-enroll"),
            format!("{RELEASE}-metrics")
        ]
    );
    for (name, service) in &services {
        assert_eq!(
            &service["spec"]["selector"], selector,
            "{name} selects the pod"
        );
        assert_eq!(service["spec"]["type"], "ClusterIP");
        let ports = service["spec"]["ports"].as_array().expect("ports");
        assert_eq!(ports.len(), 1);
        let (target, port) = if name.ends_with("-metrics") {
            ("admin", 9090)
        } else {
            ("http", 8080)
        };
        assert_eq!(ports[0]["targetPort"], target, "{name}");
        assert_eq!(ports[0]["port"], port, "{name}");
    }

    // The NetworkPolicy: the device port from NanoMDM's and the ingress controller's
    // namespaces, the admin port from the monitoring namespace; nothing else admitted.
    let policy = rendered.one("NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let namespace_peer = |name: &str| {
        json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}},
            "podSelector": {}
        })
    };
    assert_eq!(
        policy["spec"]["ingress"],
        json!([
            {
                "ports": [{"port": "http", "protocol": "TCP"}],
                "from": [namespace_peer("nanomdm"), namespace_peer("ingress-nginx")]
            },
            {
                "ports": [{"port": "admin", "protocol": "TCP"}],
                "from": [namespace_peer("monitoring")]
            }
        ]),
        "two port rules, each from its own peers"
    );
    assert!(rendered.notes.contains(&format!(
        "nanomdm -dm http://{RELEASE}.{NAMESPACE}.svc:8080/ddm/"
    )));
    assert!(rendered.notes.contains("/enroll"));
    assert!(
        rendered.notes.contains(&format!(
            "http://{RELEASE}-metrics.{NAMESPACE}.svc:9090/metrics"
        )) && rendered.notes.contains("/api/v1/status"),
        "the notes name the admin port: {}",
        rendered.notes
    );
    assert!(
        !rendered.notes.contains("insecureNoHmac"),
        "no HMAC warning with the keys set: {}",
        rendered.notes
    );
}

#[test]
fn rbac_is_the_least_privilege_set() {
    let rendered = render("defaults", &with_hmac(json!({})));
    let normalize = |rules: &Value| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for rule in rules.as_array().expect("rules") {
            let names = strings(&rule["resourceNames"]);
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        let group = if group.is_empty() { "core" } else { &group };
                        if names.is_empty() {
                            out.insert(format!("{group} {resource} {verb}"));
                        }
                        for name in &names {
                            out.insert(format!("{group} {resource}/{name} {verb}"));
                        }
                    }
                }
            }
        }
        out
    };
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for kind in ["fleetgroups", "updatepolicies", "enforcementtargets"] {
        for verb in ["get", "list", "watch", "patch"] {
            expected.insert(format!("updates.ddm.dev {kind} {verb}"));
        }
        expected.insert(format!("updates.ddm.dev {kind}/status patch"));
    }
    expected.insert("updates.ddm.dev enforcementtargets create".into());
    expected.insert("updates.ddm.dev enforcementtargets delete".into());
    // Generated targets name their policy as owner with blockOwnerDeletion, which the
    // OwnerReferencesPermissionEnforcement admission plugin allows only with this.
    expected.insert("updates.ddm.dev updatepolicies/finalizers update".into());
    expected.insert("events.k8s.io events create".into());
    expected.insert("events.k8s.io events patch".into());
    let cluster_role = rendered.named("ClusterRole", RELEASE);
    assert_eq!(normalize(&cluster_role["rules"]), expected);
    assert!(
        !cluster_role.to_string().contains('*'),
        "no wildcard anywhere in the ClusterRole"
    );
    // The admin API's token checks: cluster-scoped reviews, nothing else.
    let token_review_name = format!("{RELEASE}-token-review");
    let token_review = rendered.named("ClusterRole", &token_review_name);
    assert_eq!(
        normalize(&token_review["rules"]),
        [
            "authentication.k8s.io tokenreviews create",
            "authorization.k8s.io subjectaccessreviews create",
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );

    let role = rendered.one("Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let expected: BTreeSet<String> = [
        "coordination.k8s.io leases create",
        "coordination.k8s.io leases/ddm-update-operator get",
        "coordination.k8s.io leases/ddm-update-operator update",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(normalize(&role["rules"]), expected);

    let subject = json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]);
    for (binding, role_kind, role) in [
        ("ClusterRoleBinding", "ClusterRole", cluster_role),
        ("ClusterRoleBinding", "ClusterRole", token_review),
        ("RoleBinding", "Role", role),
    ] {
        let binding = rendered.named(binding, &text(&role["metadata"]["name"]));
        assert_eq!(binding["subjects"], subject);
        assert_eq!(binding["roleRef"]["kind"], role_kind);
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    }
    assert_eq!(rendered.one("ServiceAccount")["metadata"]["name"], RELEASE);

    // Watching one namespace: the same rules as a Role there, bound there, and the flag.
    let scoped = render(
        "watch-one-namespace",
        &with_hmac(json!({"watchNamespace": "it-fleet"})),
    );
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let names: Vec<String> = scoped
            .all(kind)
            .iter()
            .map(|o| text(&o["metadata"]["name"]))
            .collect();
        assert_eq!(
            names,
            std::slice::from_ref(&token_review_name),
            "watchNamespace: only the token reviews are cluster-wide ({kind})"
        );
    }
    let rules_role = scoped
        .all("Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "it-fleet")
        .expect("a Role in the watched namespace");
    assert_eq!(
        normalize(&rules_role["rules"]),
        normalize(&cluster_role["rules"])
    );
    let binding = scoped
        .all("RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["namespace"] == "it-fleet")
        .expect("a RoleBinding in the watched namespace");
    assert_eq!(binding["subjects"], subject);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], rules_role["metadata"]["name"]);
    let args = &scoped.deployment()["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        strings(args).contains(&"--watch-namespace=it-fleet".to_string()),
        "{args}"
    );

    let without = render("no-rbac", &with_hmac(json!({"rbac": {"create": false}})));
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(without.all(kind).is_empty(), "rbac.create=false: no {kind}");
    }
    let existing = render(
        "existing-service-account",
        &with_hmac(json!({"serviceAccount": {"create": false, "name": "mdm-operator"}})),
    );
    assert!(existing.all("ServiceAccount").is_empty());
    assert_eq!(
        existing.deployment()["spec"]["template"]["spec"]["serviceAccountName"],
        "mdm-operator"
    );
    for binding in existing.all("ClusterRoleBinding") {
        assert_eq!(binding["subjects"][0]["name"], "mdm-operator");
    }
}

#[test]
fn overrides_render_their_flags_and_mounts() {
    let by_name: BTreeMap<&str, Rendered> = render_cases()
        .into_iter()
        .map(|(name, _, rendered)| (name, rendered))
        .collect();
    let file = |case: &str, flag: &str| -> (String, String, String) {
        let rendered = &by_name[case];
        let path = rendered
            .flag(flag)
            .unwrap_or_else(|| panic!("{case}: no --{flag} in {:?}", rendered.args()));
        file_behind(rendered, &path)
    };
    let item =
        |kind: &str, name: &str, key: &str| (kind.to_string(), name.to_string(), key.to_string());

    // Every file flag of every case is a mounted Secret or ConfigMap item.
    for (case, rendered) in &by_name {
        for arg in rendered.args() {
            let Some((flag, value)) = arg.split_once('=') else {
                continue;
            };
            if flag.ends_with("-file")
                || [
                    "--catalog-roots",
                    "--inventory",
                    "--enroll-profile",
                    "--enroll-ca-bundle",
                ]
                .contains(&flag)
            {
                file_behind(rendered, value);
            }
        }
        assert_eq!(rendered.deployment()["spec"]["replicas"], 1, "{case}");
        assert_eq!(
            rendered.deployment()["spec"]["strategy"]["type"],
            "Recreate",
            "{case}"
        );
        assert_eq!(rendered.args()[0], "run", "{case}");
        assert!(
            rendered.flag("manifests").is_none(),
            "{case}: Kubernetes mode"
        );
    }

    let nanomdm = &by_name["nanomdm-and-hmac"];
    assert_eq!(
        nanomdm.flag("nanomdm-url").as_deref(),
        Some("https://nanomdm.example.com")
    );
    assert_eq!(
        file("nanomdm-and-hmac", "nanomdm-api-key-file"),
        item("Secret", "nanomdm-api", "key")
    );
    assert_eq!(
        file("nanomdm-and-hmac", "dm-receive-key-file"),
        item("Secret", "nanomdm-dm-hmac", "dm-receive-key")
    );
    assert_eq!(
        file("nanomdm-and-hmac", "dm-send-key-file"),
        item("Secret", "nanomdm-dm-hmac", "dm-send-key")
    );
    let container = nanomdm.container();
    assert_eq!(
        container["image"],
        "registry.example.com/platform/ddm-update-operator:0.1.0-rc1"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(
        nanomdm.deployment()["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert!(!nanomdm.notes.contains("insecureNoHmac"));

    // Unsigned DDM requests only where asked for, and then no Secret at all.
    for (case, rendered) in &by_name {
        assert_eq!(
            rendered.args().contains(&"--insecure-no-hmac".to_string()),
            *case == "insecure-no-hmac",
            "{case}"
        );
        assert_eq!(
            rendered.flag("dm-receive-key-file").is_none(),
            *case == "insecure-no-hmac",
            "{case}: the receive key or --insecure-no-hmac, never both"
        );
    }
    let insecure = &by_name["insecure-no-hmac"];
    assert!(insecure.flag("dm-send-key-file").is_none());
    let pod = &insecure.deployment()["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .all(|v| v["secret"].is_null()),
        "insecureNoHmac: no Secret mounted: {}",
        pod["volumes"]
    );
    assert!(
        insecure
            .notes
            .contains("WARNING: ddm.insecureNoHmac is true"),
        "{}",
        insecure.notes
    );

    // Unsigned MachineInfo only where asked for (behind a verifying proxy).
    for (case, rendered) in &by_name {
        assert_eq!(
            rendered
                .args()
                .contains(&"--enroll-allow-unsigned".to_string()),
            *case == "enrollment-profile",
            "{case}"
        );
    }
    let upstream = &by_name["enrollment-upstream"];
    assert_eq!(upstream.flag("enroll-path").as_deref(), Some("/mdm/enroll"));
    assert_eq!(
        upstream.flag("enroll-upstream").as_deref(),
        Some("https://mdm.example.com/mdm/enroll")
    );
    assert!(upstream.flag("enroll-profile").is_none());
    assert_eq!(
        file("enrollment-upstream", "enroll-ca-bundle"),
        item("ConfigMap", "apple-device-ca", "ca.pem")
    );
    assert_eq!(
        file("enrollment-upstream", "enroll-beta-token-file"),
        item("Secret", "apple-seeding", "token")
    );
    let enroll_service = upstream.named("Service", &format!("{RELEASE}-enroll"));
    assert_eq!(enroll_service["spec"]["type"], "LoadBalancer");
    assert_eq!(enroll_service["spec"]["ports"][0]["port"], 443);
    assert_eq!(enroll_service["spec"]["ports"][0]["targetPort"], "http");
    assert!(upstream.notes.contains(":443/mdm/enroll"));
    for case in ["defaults", "nanomdm-and-hmac", "enrollment-profile"] {
        assert!(
            by_name[case].flag("enroll-path").is_none(),
            "{case}: /enroll is the binary's default"
        );
    }

    assert_eq!(
        file("enrollment-profile", "enroll-profile"),
        item("Secret", "enrollment-profile", "enroll.mobileconfig")
    );
    assert!(
        by_name["enrollment-profile"]
            .flag("enroll-upstream")
            .is_none()
    );

    let catalog = &by_name["catalog-roots-and-inventory"];
    assert_eq!(catalog.flag("catalog-refresh").as_deref(), Some("12h"));
    assert_eq!(
        file("catalog-roots-and-inventory", "catalog-roots"),
        item("Secret", "catalog-roots", "ca.pem")
    );
    assert_eq!(
        file("catalog-roots-and-inventory", "inventory"),
        item("ConfigMap", "fleet-inventory", "inventory.yaml")
    );
    assert_eq!(catalog.flag("concurrency").as_deref(), Some("8"));
    assert!(catalog.args().contains(&"--assume-supervised".to_string()));
    assert!(
        !by_name["defaults"]
            .args()
            .contains(&"--assume-supervised".to_string())
    );

    let existing = &by_name["existing-claim"];
    assert!(existing.all("PersistentVolumeClaim").is_empty());
    assert_eq!(
        existing.deployment()["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "ddm-data"
    );
    let ephemeral = &by_name["no-persistence"];
    assert!(ephemeral.all("PersistentVolumeClaim").is_empty());
    assert_eq!(
        ephemeral.deployment()["spec"]["template"]["spec"]["volumes"][0],
        json!({"name": "data", "emptyDir": {}})
    );
    assert!(
        ephemeral
            .notes
            .contains("WARNING: persistence.enabled is false")
    );

    let monitored = &by_name["monitoring-and-network-policy"];
    let monitor = monitored.one("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let metrics = monitored.named("Service", &format!("{RELEASE}-metrics"));
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &metrics["metadata"]["labels"][key], value,
            "selects the metrics Service"
        );
    }
    for other in [RELEASE.to_string(), format!("{RELEASE}-enroll")] {
        let service = monitored.named("Service", &other);
        let selects_it = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
            .iter()
            .all(|(k, v)| &service["metadata"]["labels"][k] == v);
        assert!(!selects_it, "the ServiceMonitor does not select {other}");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        metrics["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let policy = monitored.one("NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        monitored.deployment()["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"],
        json!([{"port": "http", "protocol": "TCP"}])
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        json!([{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mdm"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nanomdm"}}
        }]),
        "NanoMDM's pods only: the ingress controller left out"
    );
    assert_eq!(
        policy["spec"]["ingress"][1]["ports"],
        json!([{"port": "admin", "protocol": "TCP"}])
    );
    assert_eq!(
        policy["spec"]["ingress"][1]["from"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "monitoring and the extra peer"
    );
    assert_eq!(
        metrics["spec"]["ports"][0]["targetPort"], "admin",
        "the ServiceMonitor scrapes the admin port"
    );
    let pvc = monitored.one("PersistentVolumeClaim");
    assert_eq!(pvc["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
}

/// A log pipeline reads the operator's log by default: `--log-format=json` unless `logFormat`
/// says `text`.
#[test]
fn the_log_format_is_json_by_default_and_text_on_request() {
    let defaults = render("defaults", &with_hmac(json!({})));
    assert_eq!(defaults.flag("log-format").as_deref(), Some("json"));
    let text = render("text log", &with_hmac(json!({"logFormat": "text"})));
    assert_eq!(text.flag("log-format").as_deref(), Some("text"));
}

#[test]
fn every_rendered_flag_is_one_the_binary_accepts() {
    let output = Command::new(BINARY)
        .args(["run", "--help"])
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "run --help");
    let help = String::from_utf8_lossy(&output.stdout);
    let known: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    let mut used = BTreeSet::new();
    for (case, _, rendered) in render_cases() {
        for arg in rendered.args().iter().skip(1) {
            let flag = arg.split('=').next().unwrap_or_default().to_string();
            assert!(
                known.contains(flag.as_str()),
                "case {case}: the chart passes {flag}, which `ddm-update-operator run` does not \
                 know (it knows {known:?})"
            );
            used.insert(flag);
        }
    }
    eprintln!(
        "[helm] the chart's cases use {} of the binary's flags: {used:?}",
        used.len()
    );
}

#[test]
fn invalid_values_fail_with_a_clear_message() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"replicaCount": 2}),
            "at '/replicaCount': value must be 1",
        ),
        (
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            json!({"logFormat": "xml"}),
            "at '/logFormat': value must be one of 'json', 'text'",
        ),
        (
            json!({"replicas": 1}),
            "additional properties 'replicas' not allowed",
        ),
        (
            json!({"persistance": {"enabled": false}}),
            "additional properties 'persistance' not allowed",
        ),
        (
            json!({"persistence": {"size": "lots"}}),
            "at '/persistence/size': 'lots' does not match pattern",
        ),
        (
            json!({"persistence": {"size": "10 GB"}}),
            "at '/persistence/size'",
        ),
        (
            json!({"catalog": {"refresh": "daily"}}),
            "at '/catalog/refresh': 'daily' does not match pattern",
        ),
        (
            json!({"catalog": {"url": "gdmf.apple.com/v2/pmv"}}),
            "at '/catalog/url'",
        ),
        (
            json!({"nanomdm": {"url": "nanomdm.example.com"}}),
            "at '/nanomdm/url'",
        ),
        (json!({"containerPort": 0}), "at '/containerPort'"),
        (
            json!({"networkPolicy": {"from": []}}),
            "additional properties 'from' not allowed",
        ),
        (
            json!({"networkPolicy": {"device": {"nanomdm": {"namespaceSelector": {"matchLabel": {}}}}}}),
            "additional properties 'matchLabel' not allowed",
        ),
        (
            json!({"service": {"ddm": {"type": "Ingress"}}}),
            "at '/service/ddm/type': value must be one of",
        ),
        (
            json!({"resources": {"limits": {"memory": "lots"}}}),
            "at '/resources/limits/memory'",
        ),
        (json!({"concurrency": 0}), "at '/concurrency'"),
        (
            json!({"enrollment": {"path": "enroll"}}),
            "at '/enrollment/path'",
        ),
        (
            json!({"ddm": {"hmacSecret": {"nmae": "x"}}}),
            "additional properties 'nmae' not allowed",
        ),
        // The template's own checks, for what the schema cannot say.
        (
            json!({"nanomdm": {"apiKeySecret": {"name": "nanomdm-api"}}}),
            "nanomdm.apiKeySecret.name is set but nanomdm.url is empty",
        ),
        (
            json!({"enrollment": {"upstream": "https://mdm.example.com/enroll",
                                   "profile": {"secretName": "profile"}}}),
            "enrollment.upstream and enrollment.profile exclude each other",
        ),
        (
            json!({"catalog": {"roots": {"configMapName": "a", "secretName": "b"}}}),
            "catalog.roots: set configMapName or secretName, not both",
        ),
        (
            json!({"ddm": {"hmacSecret": {"name": "h", "receiveKey": "", "sendKey": ""}}}),
            "neither ddm.hmacSecret.receiveKey nor ddm.hmacSecret.sendKey",
        ),
        (
            json!({"serviceAccount": {"create": false}}),
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
        (
            json!({"adminContainerPort": 8080}),
            "containerPort and adminContainerPort must differ",
        ),
        (
            json!({"serviceMonitor": {"enabled": true}, "service": {"metrics": {"enabled": false}}}),
            "serviceMonitor.enabled needs service.metrics.enabled",
        ),
    ];
    // Each case is valid but for its one fault: over the HMAC Secret the chart requires.
    let mut cases: Vec<(Value, &str)> = cases
        .into_iter()
        .map(|(values, message)| (with_hmac(values), message))
        .collect();
    // Without NanoMDM's receive key the operator refuses to start in Kubernetes mode (unless
    // --insecure-no-hmac), so the chart refuses to render rather than crash-loop.
    cases.extend([
        (json!({}), "ddm.hmacSecret.name is required"),
        (
            json!({"ddm": {"hmacSecret": {"name": ""}, "insecureNoHmac": false}}),
            "ddm.hmacSecret.name is required",
        ),
        (
            json!({"ddm": {"hmacSecret": {"name": HMAC_SECRET, "receiveKey": ""}}}),
            "ddm.hmacSecret.receiveKey is empty",
        ),
        (
            json!({"ddm": {"hmacSecret": {"name": HMAC_SECRET}, "insecureNoHmac": true}}),
            "ddm.insecureNoHmac and ddm.hmacSecret.receiveKey exclude each other",
        ),
        (
            json!({"ddm": {"insecureNoHmac": "yes"}}),
            "at '/ddm/insecureNoHmac': got string, want boolean",
        ),
    ]);
    let results = helm(cases.iter().map(|(v, _)| render_request(v)).collect());
    for ((values, expected), result) in cases.iter().zip(&results) {
        assert_eq!(
            result["ok"], false,
            "{values} must be refused, but it rendered"
        );
        let message = text(&result["message"]);
        assert!(
            message.contains(expected),
            "{values}: the message should say {expected:?}; it says: {message}"
        );
        eprintln!(
            "[helm] {values} -> {}",
            message.lines().last().unwrap_or_default().trim()
        );
    }
}

#[test]
fn chart_lints_clean() {
    let cases = cases();
    let mut requests: Vec<Value> = cases
        .iter()
        .map(|(_, values)| json!({"op": "lint", "values": values, "kube_version": "v1.20.0"}))
        .collect();
    requests.push(json!({"op": "lint", "values": with_hmac(json!({})), "kube_version": "v1.33.0"}));
    let results = helm(requests);
    for (index, result) in results.iter().enumerate() {
        let case = cases.get(index).map_or("defaults on 1.33", |c| c.0);
        assert_eq!(result["ok"], true, "{case}: {result}");
        let report = &result["report"];
        assert_eq!(report["errors"], json!([]), "{case}: {report}");
        let findings: Vec<&Value> = report["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            findings.is_empty(),
            "{case}: lint warnings or errors: {findings:?}"
        );
    }
    let invalid = &helm(vec![json!({"op": "lint", "values": {"replicaCount": 2}})])[0];
    assert!(
        invalid["report"]["errors"]
            .to_string()
            .contains("value must be 1"),
        "lint reports schema violations: {invalid}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_agrees_with_the_chart() {
    let dockerfile =
        std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    // Instructions, continuation lines joined, comments dropped.
    let mut instructions: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                let (keyword, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last = &instructions[*stages.last().expect("a stage")..];
    let builder = &instructions[..*stages.last().expect("a stage")];
    let get = |keyword: &str| -> Vec<&str> {
        last.iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(
        builder
            .iter()
            .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );
    assert!(
        last[0]
            .1
            .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "runtime image: {}",
        last[0].1
    );

    let defaults = render("defaults", &with_hmac(json!({})));
    let pod_security = &defaults.deployment()["spec"]["template"]["spec"]["securityContext"];
    let user = get("USER");
    assert_eq!(user.len(), 1, "one USER in the runtime stage");
    assert_eq!(
        user[0],
        format!(
            "{}:{}",
            pod_security["runAsUser"], pod_security["runAsGroup"]
        ),
        "the image's user is the chart's runAsUser:runAsGroup"
    );
    let container = defaults.container();
    assert_eq!(
        get("EXPOSE"),
        [format!(
            "{} {}",
            container["ports"][0]["containerPort"], container["ports"][1]["containerPort"]
        )],
        "EXPOSE is the chart's two container ports (device, admin)"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(get("ENTRYPOINT").first().expect("an ENTRYPOINT")).expect("exec form");
    assert_eq!(
        entrypoint.len(),
        1,
        "the binary alone; the chart gives args"
    );
    assert!(
        entrypoint[0].ends_with(&format!("/{}", env!("CARGO_PKG_NAME"))),
        "ENTRYPOINT is the operator binary: {entrypoint:?}"
    );
    assert!(
        container["command"].is_null(),
        "the chart keeps the ENTRYPOINT"
    );
    let copied = get("COPY");
    assert!(
        copied
            .iter()
            .any(|c| c.contains("--from=") && c.ends_with(&entrypoint[0])),
        "the binary is copied to {}",
        entrypoint[0]
    );
    let cmd: Vec<String> =
        serde_json::from_str(get("CMD").first().expect("a CMD")).expect("exec form");
    let args = defaults.args();
    assert_eq!(cmd[..], args[..4], "CMD is the start of the chart's args");
    assert_eq!(
        get("STOPSIGNAL"),
        ["SIGINT"],
        "the binary handles SIGINT, not SIGTERM, as PID 1"
    );

    // The build context: every file the build includes from outside src/ (not test fixtures)
    // is copied and not ignored.
    let dockerignore =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    let ignore: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ignored = |path: &str| -> bool {
        let mut out = false;
        for rule in &ignore {
            let (negated, rule) = match rule.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, *rule),
            };
            let rule = rule.trim_end_matches('/');
            let matches = match rule.strip_suffix("/*") {
                Some(dir) => path.starts_with(&format!("{dir}/")),
                None => path == rule || path.starts_with(&format!("{rule}/")),
            };
            if matches {
                out = !negated;
            }
        }
        out
    };
    // Sources of the builder's COPY instructions (all words but the destination).
    let build_copies: Vec<&str> = builder
        .iter()
        .filter(|(k, _)| k == "COPY")
        .flat_map(|(_, v)| {
            let words: Vec<&str> = v
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(
            build_copies.contains(&needed),
            "the builder copies {needed}"
        );
        assert!(!ignored(needed), ".dockerignore keeps {needed}");
    }
    for included in included_files_outside_src() {
        assert!(
            build_copies
                .iter()
                .any(|c| included == *c || included.starts_with(&format!("{c}/"))),
            "src includes {included}: the Dockerfile must COPY it"
        );
        assert!(!ignored(&included), ".dockerignore drops {included}");
    }
}

/// Files `include_bytes!`/`include_str!` pulls into the binary from outside src/ (test fixtures
/// excepted), relative to the repository.
fn included_files_outside_src() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    let mut found = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("readable");
        for chunk in source.split("include_").skip(1) {
            let Some(rest) = chunk
                .strip_prefix("bytes!(")
                .or_else(|| chunk.strip_prefix("str!("))
            else {
                continue;
            };
            let Some(literal) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let relative = literal.split('"').next().unwrap_or_default();
            let joined = file.parent().expect("a folder").join(relative);
            let mut parts: Vec<String> = Vec::new();
            for part in joined.strip_prefix(root).unwrap_or(&joined).components() {
                match part {
                    std::path::Component::ParentDir => {
                        parts.pop();
                    }
                    std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into()),
                    _ => {}
                }
            }
            let path = parts.join("/");
            if !path.starts_with("src/") && !path.starts_with("tests/") {
                found.insert(path);
            }
        }
    }
    assert!(
        found.contains("examples/catalog/pmv.json"),
        "the shipped catalog is found: {found:?}"
    );
    found
}

// ---------------------------------------------------------------------------------------------
// Argo CD health check (Lua) and the GitOps wiring
// ---------------------------------------------------------------------------------------------

const KINDS: [&str; 3] = ["FleetGroup", "UpdatePolicy", "EnforcementTarget"];

/// The three health scripts from examples/argocd/argocd-cm.yaml, by kind.
fn health_scripts() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("examples/argocd/argocd-cm.yaml"))
        .expect("argocd-cm.yaml");
    let cm: Value = serde_saphyr::from_str(&text).expect("argocd-cm.yaml is YAML");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("data");
    let scripts: BTreeMap<String, String> = data
        .iter()
        .filter_map(|(key, value)| {
            key.strip_prefix("resource.customizations.health.updates.ddm.dev_")
                .map(|kind| (kind.to_string(), text_of(value)))
        })
        .collect();
    assert_eq!(
        scripts.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut kinds = KINDS.to_vec();
            kinds.sort_unstable();
            kinds
        },
        "a health check for each kind, keyed group_Kind"
    );
    scripts
}

fn text_of(value: &Value) -> String {
    value.as_str().expect("a script").to_string()
}

/// A Lua 5.1 interpreter (tests/helm/lua.sh installs Debian's lua5.1 when it can); None when
/// there is none and none can be installed.
fn lua() -> Option<&'static Path> {
    static LUA: OnceLock<Option<PathBuf>> = OnceLock::new();
    LUA.get_or_init(|| {
        let output = Command::new("bash")
            .arg("tests/helm/lua.sh")
            .current_dir(ROOT)
            .output()
            .expect("bash runs tests/helm/lua.sh");
        if output.status.code() == Some(3) {
            return None;
        }
        assert!(
            output.status.success(),
            "tests/helm/lua.sh: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    })
    .as_deref()
}

/// A JSON value as a Lua table constructor.
fn lua_literal(value: &Value) -> String {
    fn string(s: &str) -> String {
        let mut out = String::from("\"");
        for byte in s.bytes() {
            match byte {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                0x20..=0x7e => out.push(byte as char),
                other => out.push_str(&format!("\\{other:03}")),
            }
        }
        out.push('"');
        out
    }
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs a health script on an object as Argo CD does (the object in the global `obj`); returns
/// (status, message).
fn health(lua: &Path, script: &str, object: &Value) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script_path = dir.path().join("health.lua");
    std::fs::write(&script_path, script).expect("writable");
    let harness = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua_literal(object),
        lua_literal(&Value::String(script_path.display().to_string()))
    );
    let harness_path = dir.path().join("harness.lua");
    std::fs::write(&harness_path, harness).expect("writable");
    let output = Command::new(lua)
        .arg(&harness_path)
        .output()
        .expect("lua runs");
    assert!(
        output.status.success(),
        "the health script fails on {object}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    )
}

/// An object of `kind` at `generation` whose status holds these conditions.
fn with_conditions(kind: &str, generation: i64, observed: i64, desired: &[Desired]) -> Value {
    let now: jiff::Timestamp = "2026-08-22T12:00:00Z".parse().expect("a time");
    let conditions = conditions(&[], desired, Some(observed), now);
    json!({
        "apiVersion": "updates.ddm.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "it-fleet", "generation": generation},
        "status": {"observedGeneration": observed, "conditions": conditions},
    })
}

#[test]
fn argocd_health_check_follows_the_conditions() {
    let scripts = health_scripts();
    let Some(lua) = lua() else {
        eprintln!(
            "SKIPPED argocd_health_check_follows_the_conditions: no lua5.1 and none can be \
             installed here (tests/helm/lua.sh needs root and apt-get; .ci/run installs it)"
        );
        return;
    };
    let resolved = Desired::new(RESOLVED, true, "Resolved", "resolved against the catalog");
    let synced = Desired::new(
        SYNCED,
        true,
        "Synced",
        "the backend holds every device's set",
    );
    let ready = Desired::new(READY, true, "Ready", "resolved and synced");
    let in_progress = Desired::new(COMPLIANT, false, "InProgress", "1/2 devices run the target");
    let not_found = "spec.fleetGroups: FleetGroup it-fleet/gone does not exist";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"kind": "UpdatePolicy", "metadata": {"name": "x", "generation": 1}}),
            "Progressing",
            "Waiting for ddm-update-operator",
        ),
        (
            json!({"kind": "UpdatePolicy", "metadata": {"name": "x", "generation": 1},
                   "status": {"conditions": null}}),
            "Progressing",
            "Waiting for ddm-update-operator",
        ),
        (
            with_conditions(
                "UpdatePolicy",
                2,
                2,
                &[
                    ready.clone(),
                    resolved.clone(),
                    synced.clone(),
                    in_progress.clone(),
                ],
            ),
            "Healthy",
            "InProgress: 1/2 devices run the target",
        ),
        (
            with_conditions(
                "UpdatePolicy",
                3,
                2,
                &[ready.clone(), resolved.clone(), synced.clone()],
            ),
            "Progressing",
            "observe generation 3",
        ),
        (
            with_conditions(
                "FleetGroup",
                1,
                1,
                &[ready.clone(), resolved.clone(), synced.clone()],
            ),
            "Healthy",
            "resolved and synced",
        ),
        (
            with_conditions(
                "EnforcementTarget",
                1,
                1,
                &[
                    ready.clone(),
                    Desired::new(
                        RESOLVED,
                        true,
                        "CatalogFallback",
                        "resolved against the shipped catalog (gdmf unreachable)",
                    ),
                    synced.clone(),
                    Desired::new(COMPLIANT, true, "Compliant", "2/2 devices run the target"),
                ],
            ),
            "Healthy",
            "Compliant: 2/2 devices run the target (CatalogFallback: resolved against the shipped catalog",
        ),
        (
            with_conditions(
                "UpdatePolicy",
                1,
                1,
                &[
                    Desired::new(
                        READY,
                        false,
                        "InvalidSpec",
                        "spec.deadline.timeZone: unknown time zone Mars/Olympus",
                    ),
                    Desired::new(
                        RESOLVED,
                        false,
                        "InvalidSpec",
                        "spec.deadline.timeZone: unknown time zone Mars/Olympus",
                    ),
                    synced.clone(),
                ],
            ),
            "Degraded",
            "InvalidSpec: spec.deadline.timeZone: unknown time zone Mars/Olympus",
        ),
        (
            with_conditions(
                "UpdatePolicy",
                4,
                4,
                &[
                    Desired::new(READY, false, "FleetGroupNotFound", not_found),
                    Desired::new(RESOLVED, false, "FleetGroupNotFound", not_found),
                    synced.clone(),
                ],
            ),
            "Degraded",
            "FleetGroupNotFound: spec.fleetGroups",
        ),
        (
            with_conditions(
                "EnforcementTarget",
                1,
                1,
                &[
                    Desired::new(READY, false, "BackendError", "database is locked"),
                    resolved.clone(),
                    Desired::new(SYNCED, false, "BackendError", "database is locked"),
                ],
            ),
            "Progressing",
            "BackendError: database is locked",
        ),
        (
            with_conditions(
                "FleetGroup",
                1,
                1,
                &[
                    Desired::new(
                        READY,
                        false,
                        "Suspended",
                        "spec.suspend is set: devices keep what they have",
                    ),
                    resolved.clone(),
                    Desired::new(
                        SYNCED,
                        false,
                        "Suspended",
                        "spec.suspend is set: devices keep what they have",
                    ),
                ],
            ),
            "Suspended",
            "Suspended: spec.suspend is set",
        ),
        (
            json!({"kind": "UpdatePolicy", "metadata": {"name": "x", "generation": 1},
                   "status": {"observedGeneration": 1, "conditions": [
                       {"type": "Ready", "status": "Unknown", "reason": "Resolving", "message": "first pass",
                        "observedGeneration": 1, "lastTransitionTime": "2026-08-22T12:00:00Z"}]}}),
            "Progressing",
            "Resolving: first pass",
        ),
    ];
    for (kind, script) in &scripts {
        for (object, status, message) in &cases {
            let (got_status, got_message) = health(lua, script, object);
            assert_eq!(
                (got_status.as_str(), got_message.contains(message)),
                (*status, true),
                "{kind} script on {object}: got {got_status} {got_message:?}, want {status} \
                 with {message:?}"
            );
        }
    }
}

/// All YAML documents of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn gitops_wiring_points_at_this_repository() {
    let root = Path::new(ROOT);
    // The fleet folder holds only updates.ddm.dev resources, all in one namespace.
    let mut fleet_namespaces = BTreeSet::new();
    for file in yaml_files(&root.join("examples/gitops")) {
        for doc in documents(&file) {
            assert!(
                text(&doc["apiVersion"]).starts_with("updates.ddm.dev/"),
                "{}: only updates.ddm.dev resources",
                file.display()
            );
            fleet_namespaces.insert(text(&doc["metadata"]["namespace"]));
        }
    }
    assert_eq!(fleet_namespaces.len(), 1, "{fleet_namespaces:?}");
    let fleet_namespace = fleet_namespaces.into_iter().next().expect("one");

    // Flux.
    let flux: Vec<Value> = yaml_files(&root.join("examples/flux"))
        .iter()
        .flat_map(|f| documents(f))
        .collect();
    let of_kind = |docs: &[Value], kind: &str| -> Vec<Value> {
        docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
    };
    let sources = of_kind(&flux, "GitRepository");
    assert_eq!(sources.len(), 1);
    let source = &sources[0];
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    let kustomizations = of_kind(&flux, "Kustomization");
    let names: BTreeSet<String> = kustomizations
        .iter()
        .map(|k| text(&k["metadata"]["name"]))
        .collect();
    let mut fleet_path_seen = false;
    for kustomization in &kustomizations {
        assert_eq!(
            kustomization["apiVersion"],
            "kustomize.toolkit.fluxcd.io/v1"
        );
        assert_eq!(kustomization["spec"]["sourceRef"]["kind"], "GitRepository");
        assert_eq!(
            kustomization["spec"]["sourceRef"]["name"],
            source["metadata"]["name"]
        );
        assert_eq!(
            kustomization["metadata"]["namespace"],
            source["metadata"]["namespace"]
        );
        let path = text(&kustomization["spec"]["path"]);
        let dir = root.join(path.trim_start_matches("./"));
        assert!(dir.is_dir(), "Flux Kustomization path {path} exists");
        assert_eq!(kustomization["spec"]["prune"], true);
        fleet_path_seen |= path == "./examples/gitops";
        for dependency in kustomization["spec"]["dependsOn"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(
                names.contains(&text(&dependency["name"])),
                "dependsOn {dependency}"
            );
        }
    }
    assert!(fleet_path_seen, "a Kustomization applies ./examples/gitops");
    let fleet = kustomizations
        .iter()
        .find(|k| k["spec"]["path"] == "./examples/gitops")
        .expect("the fleet Kustomization");
    assert!(
        fleet["spec"]["dependsOn"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "the fleet waits for the platform (CRDs)"
    );
    let platform = kustomizations
        .iter()
        .find(|k| k["spec"]["path"] != "./examples/gitops")
        .expect("the platform Kustomization");
    let platform_docs: Vec<Value> =
        yaml_files(&root.join(text(&platform["spec"]["path"]).trim_start_matches("./")))
            .iter()
            .flat_map(|f| documents(f))
            .collect();
    assert!(
        platform_docs
            .iter()
            .any(|d| d["kind"] == "Namespace" && d["metadata"]["name"] == fleet_namespace.as_str()),
        "the platform creates the fleet's namespace {fleet_namespace}"
    );
    let releases = of_kind(&platform_docs, "HelmRelease");
    assert_eq!(
        releases.len(),
        1,
        "the operator's HelmRelease is in the platform folder"
    );
    let release = &releases[0];
    assert_eq!(release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    let chart = &release["spec"]["chart"]["spec"];
    assert_eq!(
        root.join(text(&chart["chart"]).trim_start_matches("./")),
        root.join(CHART)
    );
    assert_eq!(chart["sourceRef"]["kind"], "GitRepository");
    assert_eq!(chart["sourceRef"]["name"], source["metadata"]["name"]);
    assert_eq!(release["spec"]["releaseName"], RELEASE);
    let mut values = vec![(
        "Flux HelmRelease".to_string(),
        release["spec"]["values"].clone(),
    )];

    // Argo CD.
    let argo: Vec<Value> = yaml_files(&root.join("examples/argocd"))
        .iter()
        .flat_map(|f| documents(f))
        .collect();
    let applications = of_kind(&argo, "Application");
    assert_eq!(applications.len(), 2);
    let mut saw_chart = false;
    let mut saw_fleet = false;
    for application in &applications {
        assert_eq!(application["apiVersion"], "argoproj.io/v1alpha1");
        let source = &application["spec"]["source"];
        let path = text(&source["path"]);
        assert!(root.join(&path).is_dir(), "Argo CD path {path} exists");
        let options = strings(&application["spec"]["syncPolicy"]["syncOptions"]);
        assert!(options.contains(&"CreateNamespace=true".to_string()));
        if path == CHART {
            saw_chart = true;
            assert_eq!(source["helm"]["releaseName"], RELEASE);
            values.push((
                "Argo CD Application".into(),
                source["helm"]["valuesObject"].clone(),
            ));
        } else if path == "examples/gitops" {
            saw_fleet = true;
            assert_eq!(
                source["directory"]["recurse"], true,
                "the tree has subfolders"
            );
            assert_eq!(
                application["spec"]["destination"]["namespace"],
                fleet_namespace.as_str()
            );
            let wave = |a: &Value| -> i64 {
                text(&a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
                    .parse()
                    .unwrap_or(0)
            };
            let operator = applications
                .iter()
                .find(|a| a["spec"]["source"]["path"] == CHART)
                .expect("the operator Application");
            assert!(
                wave(application) > wave(operator),
                "the fleet syncs after the operator"
            );
        }
    }
    assert!(
        saw_chart && saw_fleet,
        "an Application each for the chart and the fleet"
    );
    let chart_values = values;
    // Their chart values pass the schema and render.
    let results = helm(
        chart_values
            .iter()
            .map(|(_, v)| render_request(v))
            .collect(),
    );
    for ((origin, _), result) in chart_values.iter().zip(&results) {
        let rendered = parse_rendered(result).unwrap_or_else(|e| panic!("{origin}'s values: {e}"));
        assert!(rendered.flag("nanomdm-url").is_some(), "{origin}");
    }
    health_scripts();
}

// ---------------------------------------------------------------------------------------------
// The real API server
// ---------------------------------------------------------------------------------------------

/// The API server this file starts; stopped when dropped.
struct OwnServer {
    kubeconfig: PathBuf,
}

impl OwnServer {
    fn start() -> OwnServer {
        let kubeconfig = Path::new(ROOT).join("target/kubeconfig-helm");
        let script = |verb: &str| {
            let mut command = Command::new("bash");
            command
                .arg("tests/k8s/apiserver.sh")
                .arg(verb)
                .current_dir(ROOT)
                .env("K8S_APISERVER_PORT", APISERVER_PORT)
                .env("K8S_ETCD_PORT", ETCD_PORT)
                .env(
                    "K8S_APISERVER_EXTRA_ARGS",
                    "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                );
            command
        };
        // A fresh etcd: nothing left from an earlier run.
        let _ = script("stop").output();
        let started = Instant::now();
        let output = script("start")
            .arg(&kubeconfig)
            .output()
            .expect("bash runs tests/k8s/apiserver.sh");
        assert!(
            output.status.success(),
            "`K8S_APISERVER_PORT={APISERVER_PORT} K8S_ETCD_PORT={ETCD_PORT} bash \
             tests/k8s/apiserver.sh start {}` failed ({}):\n{}",
            kubeconfig.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "[helm] API server on port {APISERVER_PORT} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        OwnServer { kubeconfig }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args)
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap_or_else(|e| panic!("kubectl {args:?} cannot run: {e}"))
    }

    /// kubectl that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            stderr(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl prints JSON")
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("tests/k8s/apiserver.sh")
            .arg("stop")
            .current_dir(ROOT)
            .env("K8S_APISERVER_PORT", APISERVER_PORT)
            .env("K8S_ETCD_PORT", ETCD_PORT)
            .output();
    }
}

/// Standard error without kubectl's version-skew warnings.
fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| {
            !l.contains("WARNING: version difference") && !l.starts_with("Warning: version")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A minimal HTTP/1.1 GET on loopback: (status, headers lower-cased, body).
fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    http_request(port, "GET", path, headers, &[])
}

/// A minimal HTTP/1.1 request on loopback: (status, headers lower-cased, body).
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("reads");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let mut body = response[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 4 + size..];
    }
}

/// NanoMDM's API, as far as the operator uses it: records `PUT /v1/enqueue/...` requests with
/// their Authorization header and answers 200.
struct FakeNanoMdm {
    port: u16,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl FakeNanoMdm {
    fn start() -> FakeNanoMdm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let length: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = stream.read_exact(&mut body);
                let line = head.lines().next().unwrap_or_default().to_string();
                let authorization = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default();
                seen.lock().expect("log").push((line, authorization));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        });
        FakeNanoMdm {
            port,
            requests,
            stop,
        }
    }
}

impl Drop for FakeNanoMdm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The operator process; killed when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "[helm] the operator's log, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A value from a Secret's or ConfigMap's data (Secrets base64-decoded).
fn item_bytes(server: &OwnServer, kind: &str, name: &str, key: &str) -> Vec<u8> {
    let object = server.json(&["get", &kind.to_ascii_lowercase(), name, "-n", NAMESPACE]);
    let value = object["data"][key].as_str().unwrap_or_else(|| {
        panic!("the chart mounts key {key} of {kind} {name}, which has no such key")
    });
    if kind == "Secret" {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .expect("Secret data is base64")
    } else {
        value.as_bytes().to_vec()
    }
}

fn hmac_base64(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The Ready condition of an object: (status, reason).
fn ready_of(object: &Value) -> (String, String) {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| (text(&c["status"]), text(&c["reason"])))
        .unwrap_or_default()
}

#[test]
fn chart_on_a_real_api_server() {
    let started = Instant::now();
    let rendered = render_cases();
    let server = OwnServer::start();
    let work = tempfile::tempdir().expect("a temp dir");

    // --- CRDs -------------------------------------------------------------------------------
    // The chart's own CRDs are valid objects for this server (it drops the CEL rules it does not
    // know on a client-side apply) ...
    let crds_dir = Path::new(ROOT).join(CHART).join("crds");
    let crds_dir = crds_dir.to_string_lossy();
    let dry = server.ok(&[
        "apply",
        "--dry-run=server",
        "--validate=false",
        "-f",
        &crds_dir,
    ]);
    assert_eq!(dry.matches("(server dry run)").count(), 3, "{dry}");
    // ... but Kubernetes before 1.25 refuses them on server-side apply, as Helm 4 installs CRDs.
    let refused = server.kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &crds_dir,
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("x-kubernetes-validations"),
        "{}",
        stderr(&refused)
    );
    // So they are installed without CEL rules (`ddm-update-operator crds --without-cel`).
    let without_cel = Command::new(BINARY)
        .args(["crds", "--without-cel"])
        .output()
        .expect("the binary runs");
    assert!(without_cel.status.success());
    let crds_file = work.path().join("crds.yaml");
    std::fs::write(&crds_file, &without_cel.stdout).expect("writable");
    // As the README says: `ddm-update-operator crds --without-cel | kubectl apply -f -`.
    server.ok(&["apply", "-f", &crds_file.to_string_lossy()]);
    server.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=120s",
        "crd/fleetgroups.updates.ddm.dev",
        "crd/updatepolicies.updates.ddm.dev",
        "crd/enforcementtargets.updates.ddm.dev",
    ]);
    server.ok(&["create", "namespace", NAMESPACE]);

    // --- Every case, server-side dry run ----------------------------------------------------
    for (case, _, rendered) in &rendered {
        let (monitors, rest): (Vec<&Value>, Vec<&Value>) = rendered
            .objects
            .iter()
            .partition(|o| o["kind"] == "ServiceMonitor");
        let file = work.path().join(format!("{case}.json"));
        std::fs::write(
            &file,
            json!({"apiVersion": "v1", "kind": "List", "items": rest}).to_string(),
        )
        .expect("writable");
        let output = server.ok(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
        assert_eq!(
            output.matches("(server dry run)").count(),
            rest.len(),
            "case {case}: every object accepted:\n{output}"
        );
        for monitor in monitors {
            let file = work.path().join(format!("{case}-servicemonitor.json"));
            std::fs::write(&file, monitor.to_string()).expect("writable");
            let output =
                server.kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
            assert!(
                !output.status.success(),
                "case {case}: no ServiceMonitor CRD here"
            );
            assert!(
                stderr(&output).contains(
                    "no matches for kind \"ServiceMonitor\" in version \"monitoring.coreos.com/v1\""
                ),
                "case {case}: refused only for its missing CRD: {}",
                stderr(&output)
            );
        }
    }
    eprintln!(
        "[helm] {} cases dry-run on the server ({:.1} s so far)",
        rendered.len(),
        started.elapsed().as_secs_f64()
    );

    // --- A real helm install ----------------------------------------------------------------
    let nanomdm = FakeNanoMdm::start();
    let (receive_key, send_key, api_key) = (
        "k1-receive-from-nanomdm",
        "k2-send-to-nanomdm",
        "s3cr3t-api-key",
    );
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "nanomdm-dm-hmac",
        &format!("--from-literal=dm-receive-key={receive_key}"),
        &format!("--from-literal=dm-send-key={send_key}"),
    ]);
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "nanomdm-api",
        &format!("--from-literal=api-key={api_key}"),
    ]);
    let root = Path::new(ROOT);
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "fleet-inventory",
        &format!(
            "--from-file=inventory.yaml={}",
            root.join("examples/inventory.yaml").display()
        ),
    ]);
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "catalog-roots",
        &format!(
            "--from-file=roots.pem={}",
            root.join("src/catalog/apple-root-ca.pem").display()
        ),
    ]);
    // The enrollment gate: Apple's device CAs (here the fixtures' test CA) and a profile to serve.
    let profile = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>PayloadType</key><string>Configuration</string></dict></plist>\n";
    let profile_file = work.path().join("enroll.mobileconfig");
    std::fs::write(&profile_file, profile).expect("writable");
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "enrollment-profile",
        &format!("--from-file=enroll.mobileconfig={}", profile_file.display()),
    ]);
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "apple-device-ca",
        &format!(
            "--from-file=ca.pem={}",
            root.join("tests/fixtures/enroll/ca.pem").display()
        ),
    ]);
    server.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "apple-seeding",
        "--from-literal=token=seeding-service-token",
    ]);
    let values = json!({
        "ddm": {"hmacSecret": {"name": "nanomdm-dm-hmac"}},
        // No NanoMDM webhook in this install: every changed device gets the sync command.
        "nanomdm": {"url": format!("http://127.0.0.1:{}", nanomdm.port), "apiKeySecret": {"name": "nanomdm-api"}, "enqueueUnknown": true},
        "catalog": {"roots": {"configMapName": "catalog-roots"}},
        "inventory": {"configMapName": "fleet-inventory"},
        "enrollment": {
            "path": "/mdm/enroll",
            "profile": {"secretName": "enrollment-profile"},
            "caBundle": {"configMapName": "apple-device-ca"},
            "betaTokenSecret": {"name": "apple-seeding"},
        },
    });
    let kubeconfig = server.kubeconfig.to_string_lossy().into_owned();
    let install = |skip_crds: bool| {
        json!({"op": "install", "kubeconfig": kubeconfig, "release": RELEASE,
               "namespace": NAMESPACE, "values": values, "skip_crds": skip_crds})
    };
    let refused = &helm(vec![install(false)])[0];
    assert_eq!(
        refused["ok"], false,
        "Helm 4 applies CRDs server-side: 1.20 refuses CEL"
    );
    assert!(
        text(&refused["message"]).contains("x-kubernetes-validations"),
        "{refused}"
    );
    let installed = &helm(vec![install(true)])[0];
    assert_eq!(
        installed["ok"], true,
        "helm install --skip-crds: {installed}"
    );
    assert_eq!(installed["release"]["status"], "deployed");

    // --- The operator, run as the installed pod would run ----------------------------------
    let deployment = server.json(&["-n", NAMESPACE, "get", "deployment", RELEASE]);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let service_account = text(&pod["serviceAccountName"]);
    // Volumes, as the kubelet would lay them out.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let name = text(&mount["name"]);
        let local = work.path().join("pod").join(&name);
        std::fs::create_dir_all(&local).expect("writable");
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name.as_str())
            .expect("the mount's volume");
        if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            server.ok(&["-n", NAMESPACE, "get", "pvc", claim]);
        }
        for (kind, source) in [
            ("Secret", &volume["secret"]),
            ("ConfigMap", &volume["configMap"]),
        ] {
            if !source.is_object() {
                continue;
            }
            let object = text(if kind == "Secret" {
                &source["secretName"]
            } else {
                &source["name"]
            });
            for item in source["items"].as_array().expect("items") {
                let bytes = item_bytes(&server, kind, &object, &text(&item["key"]));
                std::fs::write(local.join(text(&item["path"])), bytes).expect("writable");
            }
        }
        mounts.push((text(&mount["mountPath"]), local));
    }
    let [http_port, admin_port] = free_ports();
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|arg| {
            if arg.starts_with("--listen=") {
                return format!("--listen=127.0.0.1:{http_port}");
            }
            if arg.starts_with("--admin-listen=") {
                return format!("--admin-listen=127.0.0.1:{admin_port}");
            }
            if arg.starts_with("--catalog=") {
                // No network here: the catalog snapshot of the day the examples describe.
                return format!("--catalog={}", root.join(CATALOG).display());
            }
            let Some((flag, value)) = arg.split_once('=') else {
                return arg;
            };
            for (mount_path, local) in &mounts {
                if let Some(rest) = value.strip_prefix(mount_path.as_str()) {
                    return format!("{flag}={}{rest}", local.display());
                }
            }
            arg
        })
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--data-dir="))
            && args.iter().any(|a| a.starts_with("--inventory="))
    );
    // The ServiceAccount's token (kube-controller-manager makes its Secret).
    let mut token_secret = String::new();
    wait_until(
        "the ServiceAccount's token Secret",
        Duration::from_secs(90),
        || {
            token_secret = text(
                &server.json(&["-n", NAMESPACE, "get", "serviceaccount", &service_account])["secrets"]
                    [0]["name"],
            );
            !token_secret.is_empty()
        },
    );
    let token =
        String::from_utf8(item_bytes(&server, "Secret", &token_secret, "token")).expect("UTF-8");
    let ca = format!("/tmp/k8s-apiserver-{APISERVER_PORT}/pki/ca.crt");
    let sa_kubeconfig = work.path().join("sa-kubeconfig");
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: \
             https://127.0.0.1:{APISERVER_PORT}\n    certificate-authority: {ca}\nusers:\n- name: sa\n  \
             user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: local\n    \
             user: sa\ncurrent-context: sa\n"
        ),
    )
    .expect("writable");
    let mut env: Vec<(String, String)> = Vec::new();
    let pod_name = format!("{RELEASE}-7d9f8b6c5-x2x4z");
    for variable in container["env"].as_array().expect("env") {
        let value = match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.clone(),
            Some("metadata.namespace") => NAMESPACE.to_string(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => text(&variable["value"]),
        };
        env.push((text(&variable["name"]), value));
    }
    let log = work.path().join("operator.log");
    let log_file = std::fs::File::create(&log).expect("writable");
    let mut command = Command::new(BINARY);
    command
        .args(&args)
        .envs(env)
        .env("KUBECONFIG", &sa_kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(log_file.try_clone().expect("a handle"))
        .stderr(log_file);
    eprintln!("[helm] operator: {} {}", BINARY, args.join(" "));
    let operator = Operator {
        child: command.spawn().expect("the operator starts"),
        log,
    };
    let mut started_operator = Instant::now();
    wait_until("the operator's /readyz", Duration::from_secs(120), || {
        TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
            && http_get(admin_port, "/readyz", &[]).0 == 200
    });
    eprintln!(
        "[helm] operator ready under the chart's RBAC in {:.1} s",
        started_operator.elapsed().as_secs_f64()
    );
    assert_eq!(
        text(
            &server.json(&["-n", NAMESPACE, "get", "lease", "ddm-update-operator"])["spec"]["holderIdentity"]
        ),
        pod_name,
        "the Lease in the release namespace, held by POD_NAME"
    );

    // HMAC from the mounted Secret: unsigned requests refused, signed ones answered and signed.
    let device = "00008112-408A72F0BC14A380";
    let (code, _, body) = http_get(http_port, "/ddm/tokens", &[("X-Enrollment-ID", device)]);
    assert_eq!(code, 401, "unsigned: {}", String::from_utf8_lossy(&body));
    let signature = hmac_base64(receive_key.as_bytes(), b"");
    let (code, headers, body) = http_get(
        http_port,
        "/ddm/tokens",
        &[
            ("X-Enrollment-ID", device),
            ("X-Hmac-Signature", &signature),
        ],
    );
    assert_eq!(code, 200, "signed: {}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers.get("x-hmac-signature"),
        Some(&hmac_base64(send_key.as_bytes(), &body)),
        "the answer is signed with the send key"
    );

    // The fleet: examples/gitops as a GitOps tool would apply it.
    started_operator = Instant::now();
    server.ok(&["create", "namespace", "it-fleet"]);
    server.ok(&[
        "apply",
        "-R",
        "-f",
        &root.join("examples/gitops").to_string_lossy(),
    ]);
    server.ok(&[
        "-n",
        "it-fleet",
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "fleetgroups,updatepolicies,enforcementtargets",
        "--all",
    ]);
    let generated = |policy: &str| -> BTreeSet<String> {
        server.json(&[
            "-n",
            "it-fleet",
            "get",
            "enforcementtargets",
            "-l",
            &format!("updates.ddm.dev/policy={policy}"),
        ])["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| text(&t["metadata"]["name"]))
            .collect()
    };
    wait_until(
        "generated EnforcementTargets",
        Duration::from_secs(90),
        || !generated("macs").is_empty(),
    );
    eprintln!(
        "[helm] examples/gitops Ready in {:.1} s; generated for macs: {:?}",
        started_operator.elapsed().as_secs_f64(),
        generated("macs")
    );
    let enqueued = || nanomdm.requests.lock().expect("log").clone();
    wait_until(
        "an enqueue to NanoMDM's API",
        Duration::from_secs(90),
        || !enqueued().is_empty(),
    );
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("nanomdm:{api_key}"))
    );
    for (line, authorization) in enqueued() {
        assert!(line.starts_with("PUT /v1/enqueue/"), "{line}");
        assert_eq!(
            authorization, expected_auth,
            "the API key from the mounted Secret"
        );
    }

    // The enrollment gate on its configured path: MachineInfo signed by a device certificate of
    // the mounted CA bundle is decided (no gate for this iPhone in the examples) and answered
    // with the mounted profile; unsigned MachineInfo is refused (403: nobody vouches for it).
    let signed = std::fs::read(root.join("tests/fixtures/enroll/machineinfo.sha256.p7s"))
        .expect("the MachineInfo fixture");
    let (code, headers, body) = http_request(
        http_port,
        "POST",
        "/mdm/enroll",
        &[("Content-Type", "application/pkcs7-signature")],
        &signed,
    );
    assert_eq!(
        (code, body.as_slice()),
        (200, &profile[..]),
        "the profile from the mounted Secret: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/x-apple-aspen-config")
    );
    let unsigned =
        std::fs::read(root.join("tests/fixtures/enroll/machineinfo.plist")).expect("fixture");
    let (code, _, body) = http_request(
        http_port,
        "POST",
        "/mdm/enroll",
        &[("Content-Type", "application/x-plist")],
        &unsigned,
    );
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        http_get(http_port, "/enroll", &[]).0,
        404,
        "only the configured path"
    );
    let (code, _, metrics) = http_get(admin_port, "/metrics", &[]);
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("ddm_update_operator_enrollment_decisions_total{"),
        "the decision is counted"
    );
    assert_eq!(
        http_get(http_port, "/metrics", &[]).0,
        404,
        "no metrics on the device port"
    );

    // The admin API under the chart's RBAC: the operator's ServiceAccount may create the
    // TokenReviews and SubjectAccessReviews (else 503); the cluster admin may read the status,
    // the operator's own ServiceAccount (which only patches status) may not.
    let admin_token =
        std::fs::read_to_string(format!("/tmp/k8s-apiserver-{APISERVER_PORT}/admin.token"))
            .expect("the API server's admin token");
    let bearer = |token: &str| format!("Bearer {}", token.trim());
    assert_eq!(
        http_get(admin_port, "/api/v1/status", &[]).0,
        401,
        "no token"
    );
    let (code, _, body) = http_get(
        admin_port,
        "/api/v1/status",
        &[("Authorization", &bearer(&admin_token))],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, _, body) = http_get(
        admin_port,
        "/api/v1/status",
        &[("Authorization", &bearer(&token))],
    );
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));

    // Argo CD's view of what the operator wrote.
    let scripts = health_scripts();
    let lua = lua();
    let health_of = |object: &Value| -> (String, String) {
        let lua = lua.expect("lua5.1 (tests/helm/lua.sh)");
        health(lua, &scripts[&text(&object["kind"])], object)
    };
    let all = server.json(&[
        "-n",
        "it-fleet",
        "get",
        "fleetgroups,updatepolicies,enforcementtargets",
    ]);
    let items = all["items"].as_array().expect("items");
    assert!(items.len() >= 10, "{}", items.len());
    if lua.is_some() {
        for object in items {
            let (status, message) = health_of(object);
            assert_eq!(
                status, "Healthy",
                "{} {}: {message}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }

    // A ring retired: its generated targets are deleted by the operator.
    let before = generated("macs");
    let broad: BTreeSet<String> = before
        .iter()
        .filter(|n| n.ends_with("-broad"))
        .cloned()
        .collect();
    assert!(!broad.is_empty(), "the broad ring has targets: {before:?}");
    server.ok(&[
        "-n",
        "it-fleet",
        "patch",
        "updatepolicy",
        "macs",
        "--type=merge",
        "-p",
        r#"{"spec":{"rings":[]}}"#,
    ]);
    wait_until(
        "the broad ring's targets to go",
        Duration::from_secs(90),
        || generated("macs").is_disjoint(&broad),
    );

    // An invalid policy and a suspended one, as Argo CD shows them.
    let invalid = work.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: updates.ddm.dev/v1alpha1\nkind: UpdatePolicy\nmetadata: {name: orphan, namespace: it-fleet}\n\
         spec:\n  fleetGroups: [no-such-group]\n  target: {strategy: latest}\n  deadline: {daysAfterPosting: 7, localTime: \"18:00\", timeZone: Europe/Berlin}\n",
    )
    .expect("writable");
    server.ok(&["apply", "-f", &invalid.to_string_lossy()]);
    server.ok(&[
        "-n",
        "it-fleet",
        "patch",
        "fleetgroup",
        "meeting-rooms",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let mut orphan = Value::Null;
    wait_until(
        "the orphan policy's FleetGroupNotFound",
        Duration::from_secs(90),
        || {
            orphan = server.json(&["-n", "it-fleet", "get", "updatepolicy", "orphan"]);
            ready_of(&orphan) == ("False".into(), "FleetGroupNotFound".into())
        },
    );
    let mut suspended = Value::Null;
    wait_until("the suspended FleetGroup", Duration::from_secs(90), || {
        suspended = server.json(&["-n", "it-fleet", "get", "fleetgroup", "meeting-rooms"]);
        ready_of(&suspended).1 == "Suspended"
            && suspended["status"]["observedGeneration"] == suspended["metadata"]["generation"]
    });
    if lua.is_some() {
        assert_eq!(health_of(&orphan).0, "Degraded", "{}", health_of(&orphan).1);
        assert_eq!(health_of(&suspended).0, "Suspended");
    }

    // A policy deleted: the finalizer withdraws, then lets it go.
    let policy = server.json(&["-n", "it-fleet", "get", "updatepolicy", "mobile"]);
    assert!(
        strings(&policy["metadata"]["finalizers"])
            .contains(&"updates.ddm.dev/withdraw".to_string()),
        "{}",
        policy["metadata"]
    );
    server.ok(&[
        "-n",
        "it-fleet",
        "delete",
        "updatepolicy",
        "mobile",
        "--timeout=120s",
    ]);
    let events = server.json(&["-n", "it-fleet", "get", "events.events.k8s.io"]);
    let reasons: BTreeSet<String> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| text(&e["reason"]))
        .collect();
    for reason in ["Resolved", "TargetRetired", "Withdrawn"] {
        assert!(reasons.contains(reason), "a {reason} event: {reasons:?}");
    }

    // Nothing the operator did was forbidden.
    let operator_log = operator.log();
    for needle in ["forbidden", "Forbidden", "403"] {
        assert!(
            !operator_log.contains(needle),
            "the operator hit {needle} under the chart's RBAC:\n{operator_log}"
        );
    }

    // What the ServiceAccount may not do.
    let subject = format!("system:serviceaccount:{NAMESPACE}:{service_account}");
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "--as", subject.as_str()];
        all.extend(args);
        server.kubectl(&all).status.success()
    };
    for allowed in [
        &["list", "fleetgroups.updates.ddm.dev", "--all-namespaces"][..],
        &[
            "patch",
            "updatepolicies.updates.ddm.dev",
            "--subresource=status",
            "-n",
            "it-fleet",
        ],
        &[
            "create",
            "enforcementtargets.updates.ddm.dev",
            "-n",
            "it-fleet",
        ],
        &["create", "leases.coordination.k8s.io", "-n", NAMESPACE],
        &[
            "update",
            "leases.coordination.k8s.io/ddm-update-operator",
            "-n",
            NAMESPACE,
        ],
        // The admin API's token checks.
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
    ] {
        assert!(can(allowed), "the ServiceAccount can {allowed:?}");
    }
    for denied in [
        &["delete", "fleetgroups.updates.ddm.dev", "-n", "it-fleet"][..],
        &["delete", "updatepolicies.updates.ddm.dev", "-n", "it-fleet"],
        &["create", "updatepolicies.updates.ddm.dev", "-n", "it-fleet"],
        &["update", "fleetgroups.updates.ddm.dev", "-n", "it-fleet"],
        &["get", "secrets", "-n", NAMESPACE],
        &["get", "configmaps", "-n", NAMESPACE],
        &["list", "pods", "--all-namespaces"],
        &["create", "leases.coordination.k8s.io", "-n", "it-fleet"],
        &[
            "update",
            "leases.coordination.k8s.io/other-lease",
            "-n",
            NAMESPACE,
        ],
        &["create", "events", "-n", "it-fleet"],
    ] {
        assert!(!can(denied), "the ServiceAccount cannot {denied:?}");
    }
    drop(operator);

    // The README's Argo CD step: merge the health checks into an existing argocd-cm.
    server.ok(&["create", "namespace", "argocd"]);
    server.ok(&[
        "-n",
        "argocd",
        "create",
        "configmap",
        "argocd-cm",
        "--from-literal=url=https://argocd.example.com",
    ]);
    let patch_file = root.join("examples/argocd/argocd-cm.yaml");
    server.ok(&[
        "-n",
        "argocd",
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "--patch-file",
        &patch_file.to_string_lossy(),
    ]);
    let cm = server.json(&["-n", "argocd", "get", "configmap", "argocd-cm"]);
    assert_eq!(
        cm["data"]["url"], "https://argocd.example.com",
        "other keys stay"
    );
    for (kind, script) in &scripts {
        assert_eq!(
            cm["data"][format!("resource.customizations.health.updates.ddm.dev_{kind}")],
            script.as_str()
        );
    }

    // helm uninstall keeps the device store.
    let uninstalled = &helm(vec![json!({"op": "uninstall", "kubeconfig": kubeconfig,
                                        "release": RELEASE, "namespace": NAMESPACE})])[0];
    assert_eq!(uninstalled["ok"], true, "{uninstalled}");
    assert!(
        !server
            .kubectl(&["-n", NAMESPACE, "get", "deployment", RELEASE])
            .status
            .success()
    );
    assert!(
        !server
            .kubectl(&["get", "clusterrole", RELEASE])
            .status
            .success()
    );
    server.ok(&["-n", NAMESPACE, "get", "pvc", &format!("{RELEASE}-data")]);
    eprintln!(
        "[helm] chart on a real API server: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// The README's commands
// ---------------------------------------------------------------------------------------------

/// The shell commands of the README's `sh` blocks, continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match trimmed.find(" #") {
            Some(at) => trimmed[..at].trim_end(),
            None if trimmed.starts_with('#') => "",
            None => trimmed,
        };
        match code.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(code);
                if !pending.trim().is_empty() {
                    commands.push(pending.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                pending.clear();
            }
        }
    }
    commands
}

#[test]
fn readme_commands_work_with_this_binary() {
    let commands = readme_commands();
    for required in [
        "cargo run --release -- run --manifests examples/gitops",
        "cargo test --locked",
    ] {
        assert!(
            commands.iter().any(|c| c == required),
            "the README keeps `{required}`"
        );
    }
    let mut ran = 0;
    for command in &commands {
        // The binary's part of a pipeline.
        let command = command.split(" | ").next().unwrap_or_default();
        let Some(rest) = command
            .strip_prefix("ddm-update-operator ")
            .or_else(|| command.strip_prefix("cargo run --release -- "))
            .or_else(|| command.strip_prefix("cargo run -- "))
        else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let subcommand: Vec<&str> = words
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .copied()
            .collect();
        let offline = matches!(
            subcommand.as_slice(),
            ["plan"] | ["crds"] | ["catalog", "show"] | ["catalog", "resolve"]
        ) && !rest.contains("http");
        if offline {
            let output = Command::new(BINARY)
                .args(&words)
                .current_dir(ROOT)
                .output()
                .expect("the binary runs");
            assert!(
                output.status.success(),
                "README: `{command}` fails ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            ran += 1;
        } else {
            // Commands that serve or need the network: their flags exist.
            let mut help_args = subcommand.clone();
            help_args.push("--help");
            let help = Command::new(BINARY)
                .args(&help_args)
                .output()
                .expect("the binary runs");
            assert!(
                help.status.success(),
                "README: `{command}`: no such subcommand"
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or_default();
                assert!(
                    help.contains(flag),
                    "README: `{command}`: {flag} is not a flag of `{}`",
                    subcommand.join(" ")
                );
            }
        }
    }
    assert!(
        ran >= 4,
        "the README's plan, crds and catalog commands ran ({ran})"
    );

    // Every metric the README names is one the operator registers (families without samples
    // are not in the exposition yet, so the registrations are read from the source).
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let source = std::fs::read_to_string(Path::new(ROOT).join("src/metrics/mod.rs"))
        .expect("src/metrics/mod.rs");
    assert!(source.contains("Registry::with_prefix(\"ddm_update_operator\")"));
    let registered: BTreeSet<String> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.trim_start().strip_prefix('"')?.split('"').next())
        .map(|name| format!("ddm_update_operator_{name}"))
        .collect();
    let exported = ddm_update_operator::metrics::Metrics::new().encode();
    let mut named = BTreeSet::new();
    for (at, _) in readme.match_indices("ddm_update_operator_") {
        let name: String = readme[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        named.insert(name);
    }
    assert!(named.len() >= 10, "{named:?}");
    for name in &named {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            registered.contains(family),
            "the README names {name}, which the operator does not register: {registered:?}"
        );
        // Families with samples already: the README's suffix matches their type.
        for kind in ["gauge", "histogram"] {
            assert!(
                !(name.ends_with("_total")
                    && exported.contains(&format!("# TYPE {family} {kind}"))),
                "{name}: a {kind} has no _total"
            );
        }
        assert!(
            name.ends_with("_total") || !exported.contains(&format!("# TYPE {family} counter")),
            "{name}: a counter is exported as {family}_total"
        );
    }
}

#[test]
fn readme_install_commands_work_with_the_chart() {
    let commands = readme_commands();
    let installs: Vec<&String> = commands
        .iter()
        .filter(|c| c.starts_with("helm install "))
        .collect();
    assert!(installs.len() >= 2, "{installs:?}");
    // Secrets the README creates: name -> keys.
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        if let Some(at) = words
            .windows(3)
            .position(|w| w == ["create", "secret", "generic"])
        {
            let keys = words
                .iter()
                .filter_map(|w| w.strip_prefix("--from-literal="))
                .map(|kv| kv.split('=').next().unwrap_or_default().to_string())
                .collect();
            secrets.insert(words[at + 3].to_string(), keys);
            assert!(
                command.contains(&format!("-n {NAMESPACE} ")),
                "{command}: in the release namespace"
            );
        }
    }
    for install in installs {
        let words: Vec<&str> = install.split_whitespace().collect();
        assert_eq!(words[2], RELEASE, "{install}: the release name");
        assert!(
            Path::new(ROOT).join(words[3]).join("Chart.yaml").is_file(),
            "{install}: the chart path"
        );
        let namespace = words
            .windows(2)
            .find(|w| w[0] == "--namespace" || w[0] == "-n")
            .map(|w| w[1]);
        assert_eq!(namespace, Some(NAMESPACE), "{install}");
        let sets: Vec<&str> = words
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| w[1])
            .collect();
        let parsed = &helm(vec![json!({"op": "parse_set", "set": sets})])[0];
        assert_eq!(parsed["ok"], true, "{install}: {parsed}");
        let rendered = render_result(&parsed["values"])
            .unwrap_or_else(|e| panic!("README: `{install}` fails: {e}"));
        // Every Secret the Deployment mounts is one the README creates, with its keys.
        let pod = &rendered.deployment()["spec"]["template"]["spec"];
        for volume in pod["volumes"].as_array().expect("volumes") {
            if !volume["secret"].is_object() {
                continue;
            }
            let name = text(&volume["secret"]["secretName"]);
            let keys = secrets.get(&name).unwrap_or_else(|| {
                panic!("README: `{install}` mounts Secret {name}, which the README does not create")
            });
            for item in volume["secret"]["items"].as_array().expect("items") {
                assert!(
                    keys.contains(&text(&item["key"])),
                    "README: Secret {name} lacks key {} that the chart mounts",
                    item["key"]
                );
            }
        }
        assert!(
            rendered.container()["image"].as_str().is_some_and(
                |i| i.starts_with("registry.example.com/platform/ddm-update-operator:")
            ),
            "{install}: the image the README builds"
        );
    }
}
