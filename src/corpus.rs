//! Stored fuzz inputs (`tests/corpus/<target>/`), replayed by each module's `corpus_regression`
//! test so that what the fuzzer found stays fixed on the stable toolchain.
//!
//! Compiled for tests only; runs on the calling test's thread.

use std::path::PathBuf;

/// Every file of `tests/corpus/<target>/`, sorted by name; the folder must not be empty.
fn files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{}: no corpus files", dir.display());
    paths.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Runs `check` on every file of `tests/corpus/<target>/`, naming each first so a failure
/// says which input it was.
pub fn replay(target: &str, check: fn(&[u8])) {
    for (path, data) in files(target) {
        eprintln!("{}", path.display());
        check(&data);
    }
}
