//! Replays fuzz inputs through the `index` fuzz target's own checks
//! (`fuzz/src/shards_checks.rs`, included by path): every crash the fuzzer
//! ever found (`fuzz/regressions/index/`) and the committed seed corpus
//! (`fuzz/corpus/index/`). See fuzz/README.md.

#[path = "../../fuzz/src/shards_checks.rs"]
mod shards_checks;

use std::path::{Path, PathBuf};

fn replay(kind: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("index");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for path in &files {
        let data = std::fs::read(path).expect("read input");
        if let Err(panic) = std::panic::catch_unwind(|| shards_checks::index(&data)) {
            eprintln!("fuzz input {} failed its check", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    println!("replayed {} inputs from {}", files.len(), kind);
    files.len()
}

#[test]
fn index_crashes_stay_fixed() {
    replay("regressions");
}

#[test]
fn index_corpus_passes() {
    assert!(replay("corpus") > 0);
}
