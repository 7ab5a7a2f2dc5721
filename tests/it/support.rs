//! What several integration tests share: paths into the repository and file helpers, simulated
//! devices ([`devices`]), fleet manifests ([`manifests`]), the DDM endpoints on loopback
//! ([`ddm`]), a NanoMDM API fake ([`nanomdm`]), child processes and metrics ([`process`]), Helm's
//! engine for the chart ([`helm`]), Prometheus's tools ([`prometheus`]). One copy here instead
//! of one per test file.

use std::path::{Path, PathBuf};

pub mod ddm;
pub mod devices;
pub mod helm;
pub mod manifests;
pub mod nanomdm;
pub mod nanomdm_webhook;
pub mod process;
pub mod prometheus;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(ROOT).join("examples")
}

/// Every `.yaml`/`.yml` file below `dir`, sorted by path.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Copies a folder tree (the examples' manifests, say) so a test can edit its copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
