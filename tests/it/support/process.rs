//! Running the operator binary (or another program) as a child process on free ports, and
//! reading what it publishes on `/metrics` (its admin port).

use std::process::Child;

/// `plan -f <manifests> --inventory <inventory> --catalog <catalog> --at <at> --output json`
/// run by the operator binary: it must exit 0 (its stderr otherwise), and its JSON.
pub fn plan_json(
    manifests: &std::path::Path,
    inventory: &std::path::Path,
    catalog: &std::path::Path,
    at: &str,
) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ddm-update-operator"))
        .args(["plan", "-f"])
        .arg(manifests)
        .arg("--inventory")
        .arg(inventory)
        .arg("--catalog")
        .arg(catalog)
        .args(["--at", at, "--output", "json"])
        .output()
        .expect("run plan");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("plan JSON")
}

/// Distinct loopback ports free right now (held together while chosen, so never the same
/// twice): the operator's device and admin listeners, say. Another process may still take one
/// before it is bound.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("bound").port())
}

/// A child process killed and reaped when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A counter or gauge in Prometheus text: the sum over its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let bare = key.split('{').next()?;
            (bare == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
