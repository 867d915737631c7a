//! `ringctl log verify DIR` on a real broker's data directory: clean after a
//! SIGTERM, and a flipped byte in a sealed segment is reported.

mod common;

use common::{bin_path, Broker};
use std::process::Command;

fn verify(dir: &std::path::Path, json: bool) -> std::process::Output {
    let mut cmd = Command::new(bin_path("ringctl"));
    cmd.args(["log", "verify"]).arg(dir);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn verify_reports_clean_logs_and_finds_a_flipped_byte() {
    // One __consumer_offsets partition (empty: no groups here) besides audit's two.
    let mut broker = Broker::start_with(2, &["--offsets-partitions", "1"]);
    let out = broker.ringctl(&["topic", "create", "audit", "--partitions", "2"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input: String = (0..5_000)
        .map(|i| format!("k{}:value-{i}\n", i % 7))
        .collect();
    let out = broker.ringctl(
        &["produce", "audit", "--key-separator", ":"],
        Some(input.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(broker.terminate().success());

    let out = verify(&broker.data_dir, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 partitions, 0 errors"), "{text}");
    let out = verify(&broker.data_dir, true);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let records: u64 = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 5_000);

    // Flip one byte inside the first batch's records of a non-empty segment.
    let segment = std::fs::read_dir(broker.data_dir.join("topics/audit/0"))
        .unwrap()
        .chain(std::fs::read_dir(broker.data_dir.join("topics/audit/1")).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "log") && std::fs::metadata(p).unwrap().len() > 100
        })
        .expect("a non-empty segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[80] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let out = verify(&broker.data_dir, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ERROR") && text.contains("DAMAGED"), "{text}");
}

#[test]
fn verify_refuses_a_directory_without_logs() {
    let dir = tempfile::tempdir().unwrap();
    let out = verify(dir.path(), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no partition directories"));
}
