//! Offline verification (`ringctl log verify`).

mod storage_util;

use ringmq_shards::log::{
    verify::{verify_dir, Severity},
    Acks, LogConfig,
};
use storage_util::*;

#[test]
fn verify_reports_counts_and_problems() {
    let root = tempdir();
    let root_path = root.path().to_path_buf();
    let p0 = root_path.join("orders-0");
    let p1 = root_path.join("orders-1");
    {
        let (p0, p1) = (p0.clone(), p1.clone());
        run(move || async move {
            let config = LogConfig {
                segment_bytes: 8192,
                index_interval_bytes: 1000,
                ..small_config()
            };
            for (dir, n) in [(p0, 30), (p1, 5)] {
                let log = open(&dir, config.clone()).await;
                let mut last = None;
                for i in 0..n {
                    last = Some(
                        log.append(make_batch(4, 700, 10 + i), Acks::Leader)
                            .unwrap(),
                    );
                }
                last.unwrap().durable.await.unwrap();
                log.close().await.unwrap();
            }
        });
    }
    let report = verify_dir(&root_path);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.warnings(), 0, "{report}");
    assert_eq!(report.partitions.len(), 2);
    let a = &report.partitions[0];
    assert_eq!(a.dir, p0);
    assert_eq!((a.batches, a.records, a.bytes), (30, 120, 30 * 761));
    assert!(a.segments >= 3);
    assert_eq!((a.first_offset, a.next_offset), (Some(0), Some(120)));
    assert_eq!(a.checkpoint.unwrap().durable_offset, 120);
    let json = report.to_json();
    assert!(json.contains("\"records\": 120"), "{json}");
    println!("{report}");

    // A single partition directory works too.
    assert_eq!(verify_dir(&p1).partitions.len(), 1);

    // Damage: a flipped bit in a sealed segment, a lying index entry.
    let logs = segment_files(&p0, "log");
    let mut data = std::fs::read(&logs[1]).unwrap();
    data[761 + 300] ^= 0x04;
    std::fs::write(&logs[1], data).unwrap();
    let report = verify_dir(&p0);
    assert!(!report.is_ok());
    let problem = report.partitions[0]
        .problems
        .iter()
        .find(|p| p.severity == Severity::Error)
        .unwrap();
    assert_eq!(problem.file, logs[1]);
    assert_eq!(problem.position, Some(761));
    assert!(problem.message.contains("CRC"), "{problem:?}");
    assert!(report.to_string().contains("DAMAGED"));
}
