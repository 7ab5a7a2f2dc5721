//! What several integration tests share: paths into the repository and file helpers. One copy
//! here instead of one per test file.

use std::path::{Path, PathBuf};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(ROOT).join("examples")
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
