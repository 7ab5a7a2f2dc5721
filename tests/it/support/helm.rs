//! Helm's own engine for the chart tests: `tests/helm/setup.sh` makes a virtual environment with
//! the PyPI package `helm-python-sdk` (Helm's Go SDK behind a C ABI) once, cached under
//! `target/helm-venv`; `tests/helm/helm.py` takes a batch of requests (render, lint, metadata,
//! install, uninstall) as JSON and answers in JSON. A missing Python or PyPI is a failure that
//! says why, never a skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};

use super::ROOT;

/// The chart, relative to the repository.
pub const CHART: &str = "charts/ddm-update-operator";

/// The venv's python with helm-python-sdk (made once by tests/helm/setup.sh).
fn helm_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let started = Instant::now();
        let output = Command::new("bash")
            .arg("tests/helm/setup.sh")
            .current_dir(ROOT)
            .output()
            .expect("bash runs tests/helm/setup.sh");
        assert!(
            output.status.success(),
            "tests/helm/setup.sh could not provide helm-python-sdk ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let python = stdout
            .lines()
            .last()
            .expect("setup.sh prints the venv's python")
            .trim()
            .to_string();
        eprintln!(
            "[helm] helm-python-sdk ready in {:.1} s: {python}",
            started.elapsed().as_secs_f64()
        );
        PathBuf::from(python)
    })
}

/// One batch of requests to tests/helm/helm.py for the chart; one result per request.
pub fn helm(requests: Vec<Value>) -> Vec<Value> {
    helm_for(&Path::new(ROOT).join(CHART), requests)
}

/// [`helm`] for a chart elsewhere (a copy a test has changed).
pub fn helm_for(chart: &Path, requests: Vec<Value>) -> Vec<Value> {
    let job = json!({"chart": chart, "requests": requests});
    let mut child = Command::new(helm_python())
        .arg(Path::new(ROOT).join("tests/helm/helm.py"))
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("writing the requests");
    let output = child.wait_with_output().expect("helm.py finishes");
    assert!(
        output.status.success(),
        "tests/helm/helm.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("helm.py answers JSON")
}

/// Helm's merge of user values: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}
