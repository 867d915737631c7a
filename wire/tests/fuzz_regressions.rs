//! Replays fuzz inputs through the fuzz targets' own checks
//! (`fuzz/src/wire_checks.rs`, included by path): every crash the fuzzer
//! ever found (`fuzz/regressions/<target>/`, one file per crash, named after
//! what it broke) and the committed seed corpora (`fuzz/corpus/<target>/`).
//! A failure here names the file; reproduce it under libFuzzer with
//! `cargo fuzz run <target> <file>` (see fuzz/README.md).

#[allow(dead_code)]
#[path = "../../fuzz/src/wire_checks.rs"]
mod wire_checks;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
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
    files
}

fn replay(kind: &str, target: &str, check: fn(&[u8])) -> usize {
    let files = inputs(kind, target);
    for path in &files {
        let data = std::fs::read(path).expect("read input");
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("fuzz input {} failed its check", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    println!("replayed {} inputs from {}", files.len(), kind);
    files.len()
}

#[test]
fn frame_decoder_crashes_stay_fixed() {
    replay("regressions", "frame_decoder", wire_checks::frame_decoder);
}

#[test]
fn envelope_crashes_stay_fixed() {
    replay("regressions", "envelope", wire_checks::envelope);
}

#[test]
fn batch_crashes_stay_fixed() {
    replay("regressions", "batch", wire_checks::batch);
}

#[test]
fn frame_decoder_corpus_passes() {
    assert!(replay("corpus", "frame_decoder", wire_checks::frame_decoder) > 0);
}

#[test]
fn envelope_corpus_passes() {
    assert!(replay("corpus", "envelope", wire_checks::envelope) > 0);
}

#[test]
fn batch_corpus_passes() {
    assert!(replay("corpus", "batch", wire_checks::batch) > 0);
}
