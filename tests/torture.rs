//! `ringmq-torture`: a short SIGKILL torture run must find nothing wrong,
//! and its negative control (a log tail cut off while the broker is down)
//! must be caught as a storage loss. Needs `cargo build --workspace --bins`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin_path, test_tmp_root, wait_output_timeout};

fn torture(name: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = test_tmp_root().join(format!("torture-{name}-{}", std::process::id()));
    let mut cmd = Command::new(bin_path("ringmq-torture"));
    cmd.arg("--broker-bin")
        .arg(bin_path("ringmq"))
        .arg("--data-dir")
        .arg(&dir)
        .arg("--json")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = wait_output_timeout(
        cmd.spawn().expect("spawn ringmq-torture"),
        Duration::from_secs(180),
        "ringmq-torture",
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "ringmq-torture printed no JSON report ({e}); exit {:?}\nstdout: {}\nstderr: {stderr}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let code = output.status.code().unwrap_or(-1);
    if code == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (code, report, stderr)
}

fn count(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report lacks {field}: {report:#}"))
}

#[test]
fn twenty_kill_cycles_lose_nothing_acknowledged() {
    let (code, report, stderr) = torture(
        "clean",
        &[
            "--cycles",
            "24",
            "--min-ms",
            "20",
            "--max-ms",
            "150",
            "--shards",
            "2",
            "--partitions",
            "4",
            "--producers",
            "3",
            "--message-size",
            "48",
            "--segment-bytes",
            "32768",
            "--final-ms",
            "300",
        ],
    );
    for field in [
        "lost",
        "duplicated",
        "reordered",
        "inconsistent",
        "unexpected",
    ] {
        assert_eq!(count(&report, field), 0, "{field}: {stderr}");
    }
    assert_eq!(count(&report, "cycles"), 24, "{stderr}");
    assert!(
        report["messages"]["acked"].as_u64().unwrap() > 0,
        "{stderr}"
    );
    assert!(report["check"]["unreadable_partitions"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(report["restart_ms"]["count"].as_u64(), Some(24));
    assert!(report["restart_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["seed"].is_u64());
    assert_eq!(report["ok"], true);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn sabotaged_log_is_reported_as_storage_loss() {
    let (code, report, stderr) = torture(
        "sabotage",
        &[
            "--sabotage",
            "--sabotage-bytes",
            "16384",
            "--cycles",
            "4",
            "--min-ms",
            "150",
            "--max-ms",
            "250",
            "--partitions",
            "2",
            "--message-size",
            "48",
            "--final-ms",
            "200",
        ],
    );
    assert!(report["sabotage"].is_object(), "no sabotage done: {stderr}");
    let lost = count(&report, "lost");
    assert!(lost > 0, "the checker missed the sabotage: {stderr}");
    assert!(count(&report, "lost_storage") > 0, "{stderr}");
    // A cut below the durable checkpoint fences the partition: what is still
    // in its files then counts as read-path loss too, so only the storage
    // loss is asserted.
    assert_eq!(report["ok"], false);
    assert_eq!(code, 1, "{stderr}");
}
