//! Shared code of ringmq's fuzz targets. Each `*_checks` function takes the
//! fuzzer's raw input and panics when an invariant breaks; the targets in
//! `fuzz_targets/` are one-line wrappers. The `*_samples` modules build the
//! valid inputs the seed corpora start from (`examples/gen_corpus.rs`). The
//! workspace's `*/tests/fuzz_regressions.rs` and `*/tests/decoder_props.rs`
//! include these files by path, so `cargo test` replays the committed
//! corpora and crash inputs through the very same checks.

pub mod shards_checks;
pub mod shards_samples;
pub mod wire_checks;
pub mod wire_samples;
