//! The chart's PrometheusRule (`metrics.prometheusRule`), checked by Prometheus's own `promtool`
//! (Debian's `prometheus` package, see [`crate::support::prometheus`]).
//!
//! The rule groups have one source, `charts/ddm-update-operator/files/alerts.yaml`, which the
//! chart's template tunes with its values. These tests render the chart through Helm's engine
//! ([`crate::support::helm`]) and take the PrometheusRule's `spec.groups`, so promtool checks
//! exactly what the chart ships.
//!
//! * `chart_alerts_pass_promtool`: `promtool check rules` on the rendered groups, and `promtool
//!   test rules` with `tests/prometheus/alerts.test.yaml` (series that fire each alert, with its
//!   labels and annotations, and series that do not).
//! * `every_alert_has_a_firing_and_a_quiet_case`: the unit tests cover every alert of
//!   alerts.yaml both ways, and name no alert it lacks; every alert carries `severity`,
//!   `summary` and `description`.
//! * `a_broken_expression_fails_with_promtools_message`, `a_missed_alert_fails_with_promtools_
//!   message`: promtool's refusal is the test's failure, with promtool's words.
//! * `a_labelled_counters_first_error_fires`: the README's former `increase(x[1h]) > 0` misses the
//!   first error of a counter with labels (its series appears at 1); the chart's rule does not.
//! * `values_tune_the_alerts`, `bad_alert_values_are_refused`: `for`, severity, thresholds,
//!   windows, `enabled`, the object's and the alerts' labels; the schema and the template refuse
//!   what would not work, naming the key.
//! * `alerts_and_values_that_drifted_apart_are_refused`: an alert of alerts.yaml without values, a
//!   value no `${placeholder}` uses, a placeholder no value fills: the chart does not render.
//! * `the_rule_lints_clean`; `readme_lists_every_alert`, and its `helm template` command gives a
//!   rules file promtool takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::helm::{CHART, helm, helm_for, merge};
use crate::support::prometheus::tool;
use crate::support::{ROOT, copy_dir};

const ALERTS: &str = "charts/ddm-update-operator/files/alerts.yaml";
const UNIT_TESTS: &str = "tests/prometheus/alerts.test.yaml";

fn promtool() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| tool("promtool"))
}

/// Chart values with the rule on (and the HMAC Secret the chart requires), under `over`.
fn values(over: Value) -> Value {
    let mut values = json!({
        "ddm": {"hmacSecret": {"name": "nanomdm-dm-hmac"}},
        "metrics": {"prometheusRule": {"enabled": true}},
    });
    merge(&mut values, over);
    values
}

/// The chart's PrometheusRules for `values` (Helm's message when it does not render).
fn render_rules(values: &Value) -> Result<Vec<Value>, String> {
    render_rules_in(&Path::new(ROOT).join(CHART), values)
}

/// [`render_rules`] for a copy of the chart.
fn render_rules_in(chart: &Path, values: &Value) -> Result<Vec<Value>, String> {
    let request = json!({
        "op": "render", "values": values,
        "release": "ddm-update-operator", "namespace": "ddm-system",
    });
    let result = helm_for(chart, vec![request]).remove(0);
    if result["ok"] != true {
        return Err(format!("{}: {}", result["error"], result["message"]));
    }
    Ok(result["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["object"].clone())
        .filter(|o| o["kind"] == "PrometheusRule")
        .collect())
}

/// The one PrometheusRule's `spec` (its rule groups) for `values`.
fn rule_spec(values: &Value) -> Value {
    let rules = render_rules(values).unwrap_or_else(|e| panic!("the chart renders: {e}"));
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    rules[0]["spec"].clone()
}

/// Every rule of the groups, by alert name.
fn rules_of(spec: &Value) -> Vec<&Value> {
    spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

fn alert_names(spec: &Value) -> Vec<String> {
    rules_of(spec)
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_string())
        .collect()
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path)).expect(path);
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// promtool's verdict: its output when it exits 0, otherwise its output as the error.
fn run_promtool(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {} ({}):\n{text}",
            args.join(" "),
            output.status
        ))
    }
}

/// `promtool check rules` on the groups, written as rules.yaml (JSON is YAML) in `dir`.
fn check_rules(dir: &Path, spec: &Value) -> Result<String, String> {
    std::fs::write(dir.join("rules.yaml"), spec.to_string()).expect("writable");
    run_promtool(dir, &["check", "rules", "rules.yaml"])
}

/// `promtool test rules` with the committed unit tests, against the groups (their
/// `rule_files: [rules.yaml]` is the file [`check_rules`] wrote next to them).
fn test_rules(dir: &Path, spec: &Value) -> Result<String, String> {
    std::fs::write(dir.join("rules.yaml"), spec.to_string()).expect("writable");
    std::fs::copy(
        Path::new(ROOT).join(UNIT_TESTS),
        dir.join("alerts.test.yaml"),
    )
    .expect("copy the unit tests");
    run_promtool(dir, &["test", "rules", "alerts.test.yaml"])
}

/// Both promtool commands must pass; their failure is this panic, with promtool's message.
fn assert_promtool_passes(spec: &Value) {
    let dir = tempfile::tempdir().expect("a temp dir");
    if let Err(message) = check_rules(dir.path(), spec) {
        panic!("promtool check rules refuses the chart's alerts: {message}");
    }
    if let Err(message) = test_rules(dir.path(), spec) {
        panic!("promtool test rules fails on the chart's alerts: {message}");
    }
}

/// The groups with one alert's expression replaced.
fn with_expr(spec: &Value, alert: &str, expr: &str) -> Value {
    let mut spec = spec.clone();
    let rule = spec["groups"]
        .as_array_mut()
        .expect("groups")
        .iter_mut()
        .flat_map(|g| g["rules"].as_array_mut().expect("rules"))
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("no alert {alert}"));
    rule["expr"] = json!(expr);
    spec
}

#[test]
fn chart_alerts_pass_promtool() {
    let spec = rule_spec(&values(json!({})));
    let dir = tempfile::tempdir().expect("a temp dir");
    let checked = check_rules(dir.path(), &spec).unwrap_or_else(|e| panic!("{e}"));
    let count = alert_names(&spec).len();
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "promtool read every rule: {checked}"
    );
    let tested = test_rules(dir.path(), &spec).unwrap_or_else(|e| panic!("{e}"));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_case() {
    let source = yaml_file(ALERTS);
    let shipped: Vec<String> = source["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| r["alert"].as_str().expect("alert").to_string())
        .collect();
    assert!(shipped.len() >= 13, "the README's alerts: {shipped:?}");
    // With the defaults, the chart renders every alert of the file.
    let spec = rule_spec(&values(json!({})));
    assert_eq!(
        alert_names(&spec),
        shipped,
        "the defaults render every alert"
    );
    for rule in rules_of(&spec) {
        let name = &rule["alert"];
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|t| t.len() > 20),
                "{name}: a {annotation}"
            );
        }
        assert!(
            rule["annotations"]["runbook_url"].is_null(),
            "{name}: its description says what to do"
        );
    }

    let unit_tests = yaml_file(UNIT_TESTS);
    let cases: Vec<&Value> = unit_tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().expect("alert_rule_test"))
        .collect();
    for case in &cases {
        let name = case["alertname"].as_str().expect("alertname");
        assert!(
            shipped.iter().any(|s| s == name),
            "{UNIT_TESTS} tests {name}, which {ALERTS} does not define"
        );
    }
    let mut missing = Vec::new();
    for name in &shipped {
        let of_it: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == *name).collect();
        let firing: Vec<&Value> = of_it
            .iter()
            .flat_map(|c| c["exp_alerts"].as_array().into_iter().flatten())
            .collect();
        let quiet = of_it
            .iter()
            .any(|c| c["exp_alerts"].as_array().is_none_or(Vec::is_empty));
        if firing.is_empty() {
            missing.push(format!("{name}: no case where it fires"));
        }
        if !quiet {
            missing.push(format!("{name}: no case where it stays quiet"));
        }
        for alert in firing {
            assert!(
                alert["exp_labels"]["severity"].is_string(),
                "{name}: a firing case expects its severity: {alert}"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    alert["exp_annotations"][annotation].is_string(),
                    "{name}: a firing case expects its {annotation}: {alert}"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{UNIT_TESTS} must cover every alert both ways:\n{}",
        missing.join("\n")
    );
}

#[test]
#[should_panic(expected = "could not parse expression")]
fn a_broken_expression_fails_with_promtools_message() {
    let spec = rule_spec(&values(json!({})));
    // An unclosed label matcher, as a hand edit of alerts.yaml might leave it.
    let broken = with_expr(
        &spec,
        "DdmUpdateDevicesFailing",
        r#"ddm_update_operator_devices{state="failed" > 0"#,
    );
    assert_promtool_passes(&broken);
}

#[test]
fn a_missed_alert_fails_with_promtools_message() {
    // A threshold no unit test reaches: the firing cases of that alert fail, by name.
    let spec = rule_spec(&values(json!({"metrics": {"prometheusRule": {"alerts": {
        "DdmUpdateDevicesFailing": {"threshold": 1000},
    }}}})));
    let dir = tempfile::tempdir().expect("a temp dir");
    check_rules(dir.path(), &spec).unwrap_or_else(|e| panic!("still valid rules: {e}"));
    let message = test_rules(dir.path(), &spec).expect_err("the firing case fails");
    assert!(message.contains("FAILED"), "{message}");
    assert!(
        message.contains("alertname: DdmUpdateDevicesFailing, time: 25m"),
        "promtool names the alert and the time: {message}"
    );
    assert!(message.contains("got:[]"), "{message}");
}

#[test]
fn a_labelled_counters_first_error_fires() {
    let spec = rule_spec(&values(json!({})));
    // What the README said to alert on: the first error's series appears at 1, and increase()
    // sees no step, so a NanoMDM that starts failing goes unnoticed until its second error.
    let increase_only = with_expr(
        &spec,
        "DdmUpdateNanoMdmRequestsFailing",
        r#"increase(ddm_update_operator_backend_requests_total{outcome="error"}[1h]) > 0"#,
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let message = test_rules(dir.path(), &increase_only).expect_err("the first error is missed");
    assert!(
        message.contains("name: DdmUpdateNanoMdmRequestsFailing first error,")
            && message.contains("got:[]"),
        "{message}"
    );
    // The chart's rule fires on it (chart_alerts_pass_promtool runs the same cases).
    test_rules(dir.path(), &spec).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn values_tune_the_alerts() {
    let spec = rule_spec(&values(json!({"metrics": {"prometheusRule": {
        "labels": {"release": "prometheus"},
        "alertLabels": {"team": "endpoints", "severity": "info"},
        "alerts": {
            "DdmUpdateDevicesFailing": {"threshold": 5, "for": "1h", "severity": "page"},
            "DdmUpdateCatalogOld": {"maxAgeDays": 7},
            "DdmUpdateNanoMdmPushesFailing": {"window": "6h"},
            "DdmUpdateDevicesStale": {"enabled": false},
        },
    }}})));
    let rule = |name: &str| -> Value {
        rules_of(&spec)
            .into_iter()
            .find(|r| r["alert"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let failing = rule("DdmUpdateDevicesFailing");
    assert_eq!(
        failing["expr"],
        r#"ddm_update_operator_devices{state="failed"} > 5"#
    );
    assert_eq!(failing["for"], "1h");
    assert_eq!(
        failing["labels"],
        json!({"severity": "page", "team": "endpoints"}),
        "the alert's own severity wins over alertLabels"
    );
    assert_eq!(
        rule("DdmUpdateCatalogOld")["expr"],
        "ddm_update_operator_catalog_age_seconds > 7 * 86400"
    );
    assert!(
        rule("DdmUpdateCatalogOld")["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("older than 7 days")),
        "the annotations say the tuned value"
    );
    let pushes = rule("DdmUpdateNanoMdmPushesFailing");
    let expr = pushes["expr"].as_str().expect("expr");
    assert!(
        expr.contains("[6h]") && expr.contains("offset 6h") && !expr.contains("1h"),
        "{expr}"
    );
    assert!(
        rule("DdmUpdateDevicesStale").is_null(),
        "disabled: left out"
    );
    assert!(
        rules_of(&spec)
            .iter()
            .all(|r| r["labels"]["team"] == "endpoints"),
        "alertLabels on every alert"
    );
    let all = render_rules(&values(json!({"metrics": {"prometheusRule": {
        "labels": {"release": "prometheus"}}}})))
    .expect("renders");
    assert_eq!(all[0]["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(all[0]["metadata"]["namespace"], "ddm-system");
    // Tuned rules are still rules promtool takes.
    let dir = tempfile::tempdir().expect("a temp dir");
    check_rules(dir.path(), &spec).unwrap_or_else(|e| panic!("{e}"));

    // Off by default: no PrometheusRule.
    let off = render_rules(&json!({"ddm": {"hmacSecret": {"name": "nanomdm-dm-hmac"}}}))
        .expect("renders");
    assert!(off.is_empty(), "{off:?}");
}

#[test]
fn bad_alert_values_are_refused() {
    let refused = |over: Value, words: &[&str]| {
        let Err(error) = render_rules(&values(over.clone())) else {
            panic!("refused: {over}")
        };
        for word in words {
            assert!(
                error.contains(word),
                "{over}: the error names {word}: {error}"
            );
        }
    };
    // An alert the file does not have, a key its shape does not take, a malformed duration.
    refused(
        json!({"metrics": {"prometheusRule": {"alerts": {"DdmUpdateTypo": {"enabled": true}}}}}),
        &["DdmUpdateTypo"],
    );
    refused(
        json!({"metrics": {"prometheusRule": {"alerts": {"DdmUpdateNoLeader": {"threshold": 2}}}}}),
        &["DdmUpdateNoLeader", "threshold"],
    );
    refused(
        json!({"metrics": {"prometheusRule": {"alerts": {"DdmUpdateResolveFailing": {"window": "an hour"}}}}}),
        &["DdmUpdateResolveFailing", "window"],
    );
    refused(
        json!({"metrics": {"prometheusRule": {"alerts": {"DdmUpdateDevicesFailing": {"threshold": -1}}}}}),
        &["DdmUpdateDevicesFailing", "threshold"],
    );
    // null removes a default in Helm: an alert of the file without its values.
    refused(
        json!({"metrics": {"prometheusRule": {"alerts": {"DdmUpdateCatalogOld": null}}}}),
        &["DdmUpdateCatalogOld"],
    );
}

#[test]
fn alerts_and_values_that_drifted_apart_are_refused() {
    let work = tempfile::tempdir().expect("a temp dir");
    let chart = work.path().join("ddm-update-operator");
    copy_dir(&Path::new(ROOT).join(CHART), &chart);
    let file = chart.join("files/alerts.yaml");
    let original = std::fs::read_to_string(&file).expect("alerts.yaml");
    let refused = |alerts: String, words: &str| {
        std::fs::write(&file, &alerts).expect("writable");
        let error =
            render_rules_in(&chart, &values(json!({}))).expect_err("the chart refuses to render");
        assert!(error.contains(words), "the error says {words}: {error}");
    };
    // An alert added to the file but not to values.yaml (nor to the schema).
    refused(
        format!(
            "{original}      - alert: DdmUpdateSomethingNew\n        expr: up == 0\n        \
             annotations: {{summary: new, description: new}}\n"
        ),
        "metrics.prometheusRule.alerts.DdmUpdateSomethingNew is missing",
    );
    // A value the expression no longer uses.
    refused(
        original.replace(
            r#"{state="failed"} > ${threshold}"#,
            r#"{state="failed"} > 0"#,
        ),
        "metrics.prometheusRule.alerts.DdmUpdateDevicesFailing.threshold: the alert's expression has no ${threshold}",
    );
    // A placeholder no value fills.
    refused(
        original.replace(
            r#"{state="failed"} > ${threshold}"#,
            r#"{state="failed"} > ${threshold} * ${factor}"#,
        ),
        "alert DdmUpdateDevicesFailing uses a ${...} that metrics.prometheusRule.alerts.DdmUpdateDevicesFailing does not set",
    );
    // Not YAML.
    refused(
        format!("{original}\n  - : [\n"),
        "files/alerts.yaml does not parse",
    );
}

#[test]
fn the_rule_lints_clean() {
    let result = &helm(vec![json!({
        "op": "lint",
        "values": values(json!({"metrics": {"prometheusRule": {"labels": {"release": "prometheus"}}}})),
        "kube_version": "v1.33.0",
    })])[0];
    assert_eq!(result["ok"], true, "{result}");
    let report = &result["report"];
    assert_eq!(report["errors"], json!([]), "{report}");
    let findings: Vec<&Value> = report["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
        .collect();
    assert!(findings.is_empty(), "lint warnings or errors: {findings:?}");
}

#[test]
fn readme_lists_every_alert() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let spec = rule_spec(&values(json!({})));
    for name in alert_names(&spec) {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md lists the alert {name}"
        );
    }
    assert!(
        readme.contains("metrics.prometheusRule.enabled"),
        "README.md says how to turn the rule on"
    );

    // Its `helm template ... --show-only templates/prometheusrule.yaml | yq '.spec'` gives a rules
    // file promtool takes.
    let command = readme_command(&readme, "helm template ");
    let words: Vec<&str> = command.split_whitespace().collect();
    assert!(
        Path::new(ROOT).join(words[3]).join("Chart.yaml").is_file(),
        "{command}: the chart path"
    );
    let option = |name: &str| -> Vec<String> {
        words
            .windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].to_string())
            .collect()
    };
    let show_only = option("--show-only");
    assert_eq!(show_only, ["templates/prometheusrule.yaml"], "{command}");
    assert!(
        command.ends_with("| yq '.spec' > ddm-update-operator-rules.yaml"),
        "{command}"
    );
    let parsed = helm(vec![json!({"op": "parse_set", "set": option("--set")})]).remove(0);
    let result = helm(vec![json!({
        "op": "render", "values": parsed["values"],
        "release": words[2], "namespace": "default",
    })])
    .remove(0);
    assert_eq!(result["ok"], true, "{command}: {result}");
    let shown: Vec<&Value> = result["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["source"] == format!("ddm-update-operator/{}", show_only[0]))
        .collect();
    assert_eq!(shown.len(), 1, "{command}: one object shown");
    let dir = tempfile::tempdir().expect("a temp dir");
    check_rules(dir.path(), &shown[0]["object"]["spec"]).unwrap_or_else(|e| panic!("{e}"));
}

/// The README's shell command starting with `start`, its continuation lines joined.
fn readme_command(readme: &str, start: &str) -> String {
    let mut command = String::new();
    for line in readme.lines().skip_while(|l| !l.starts_with(start)) {
        command.push_str(line.trim().trim_end_matches('\\').trim_end());
        if !line.ends_with('\\') {
            break;
        }
        command.push(' ');
    }
    assert!(
        !command.is_empty(),
        "README.md has a command starting with {start}"
    );
    command
}
