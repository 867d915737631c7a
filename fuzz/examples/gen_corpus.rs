//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml
//! --example gen_corpus [-- fuzz/corpus]`. Seeds are named `seed-*` and
//! rewritten on every run; inputs the fuzzer added (hash names) are kept.

use std::fs;
use std::path::Path;

use ringmq_fuzz::shards_samples::{checkpoint_files, offset_index_files, time_index_files};
use ringmq_fuzz::wire_samples::{batches, encode_request, envelopes, frame, requests};
use ringmq_wire::batch::compression::compress;
use ringmq_wire::batch::{Compression, HEADER_SIZE};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);
    for target in ["envelope", "frame_decoder", "batch", "index", "canary"] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("mkdir");
        for entry in fs::read_dir(&dir).expect("read corpus dir") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                fs::remove_file(path).expect("remove old seed");
            }
        }
    }

    // envelope: every request and response, plus edge cases.
    let dir = root.join("envelope");
    for (i, envelope) in envelopes().iter().enumerate() {
        write(&dir, &format!("{i:02}"), envelope);
    }
    write(&dir, "empty", b"");
    write(&dir, "zero-root", &[0; 8]);
    let mut v1 = requests()[0].clone();
    v1.version = 1;
    write(&dir, "version-1", &encode_request(&v1));

    // frame_decoder: [control][frames]; 0x3F allows frames up to 1016 bytes.
    let dir = root.join("frame_decoder");
    let payload = &batches()[1];
    let mut stream = vec![0x3F];
    for envelope in envelopes() {
        stream.extend_from_slice(&frame(&envelope, b""));
    }
    write(&dir, "all-envelopes", &stream);
    let produce = encode_request(&requests()[5]);
    write(
        &dir,
        "produce-with-batch",
        &with_mode(0x3F, &frame(&produce, payload)),
    );
    let mut two = frame(&produce, payload);
    two.extend_from_slice(&frame(&envelopes()[0], b"tail"));
    write(&dir, "two-frames-small-max", &with_mode(0x05, &two));
    write(
        &dir,
        "truncated",
        &with_mode(0x3F, &frame(&produce, payload)[..40]),
    );
    write(
        &dir,
        "too-short",
        &with_mode(0x3F, &[0, 0, 0, 3, 0, 0, 0, 0]),
    );
    write(
        &dir,
        "bad-envelope-length",
        &with_mode(0x3F, &[0, 0, 0, 8, 0, 0, 0, 9, 1, 2, 3, 4]),
    );
    write(
        &dir,
        "empty-envelope",
        &with_mode(0x3F, &[0, 0, 0, 4, 0, 0, 0, 0]),
    );

    // batch: mode = codec << 2 | submode (see wire_checks::batch).
    let dir = root.join("batch");
    let all = batches();
    let mut stream = Vec::new();
    for (i, b) in all.iter().enumerate() {
        write(&dir, &format!("stream-{i:02}"), &with_mode(0, b));
        write(&dir, &format!("sealed-{i:02}"), &with_mode(1, b));
        stream.extend_from_slice(b);
    }
    write(&dir, "stream-all", &with_mode(0, &stream));
    let plain = &all[1]; // five uncompressed records
    for codec in Compression::ALL {
        let id = codec.id();
        write(
            &dir,
            &format!("compress-{codec}"),
            &with_mode(id << 2 | 2, plain),
        );
        let mut section = Vec::new();
        compress(codec, &plain[HEADER_SIZE..], &mut section).expect("compress");
        write(
            &dir,
            &format!("codecs-{codec}-stream"),
            &with_mode(63 << 2 | 3, &section),
        );
    }
    write(
        &dir,
        "codecs-text",
        &with_mode(16 << 2 | 3, b"hello hello hello hello"),
    );
    write(&dir, "header-only", &with_mode(1, &[0; HEADER_SIZE]));

    // index: mode & 3 = format, bit 7 = seal, bit 6 = monotonic.
    let dir = root.join("index");
    for (i, f) in offset_index_files().iter().enumerate() {
        write(&dir, &format!("offset-{i}"), &with_mode(0, f));
        write(&dir, &format!("offset-{i}-sealed"), &with_mode(0xC0, f));
    }
    for (i, f) in time_index_files().iter().enumerate() {
        write(&dir, &format!("time-{i}"), &with_mode(1, f));
        write(&dir, &format!("time-{i}-sealed"), &with_mode(0xC1, f));
    }
    for (i, f) in checkpoint_files().iter().enumerate() {
        write(&dir, &format!("checkpoint-{i}"), &with_mode(2, f));
        write(
            &dir,
            &format!("checkpoint-{i}-sealed"),
            &with_mode(0x80 | 2, f),
        );
    }
    write(&dir, "short", &[0x80, 1, 2, 3]);

    // canary: a neutral seed; the fuzzer must find the crash by itself.
    write(&root.join("canary"), "zeros", &[0; 4]);
}
