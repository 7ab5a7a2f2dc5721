//! Prometheus's own tools (`promtool`, `prometheus`) from Debian's `prometheus` package, found
//! on PATH; `tests/prometheus/setup.sh` installs the package once when either is missing (as
//! root with apt-get). A missing tool is a failure that says why, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::ROOT;

/// The path of `name` (`promtool` or `prometheus`), installing the package first if needed.
pub fn tool(name: &str) -> PathBuf {
    if let Some(path) = on_path(name) {
        return path;
    }
    installed();
    on_path(name)
        .unwrap_or_else(|| panic!("tests/prometheus/setup.sh succeeded, yet {name} is not on PATH"))
}

/// Runs tests/prometheus/setup.sh once per test binary; panics with its message when it fails.
fn installed() {
    static SETUP: OnceLock<()> = OnceLock::new();
    SETUP.get_or_init(|| {
        let output = Command::new("bash")
            .arg("tests/prometheus/setup.sh")
            .current_dir(ROOT)
            .output()
            .expect("bash runs tests/prometheus/setup.sh");
        assert!(
            output.status.success(),
            "promtool and prometheus are needed (Debian's prometheus package; .ci/run installs \
             it): tests/prometheus/setup.sh {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
