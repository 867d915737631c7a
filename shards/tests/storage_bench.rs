//! Throughput smoke benchmark (ignored by default; run with
//! `cargo test --release -p ringmq-shards --test storage_bench -- --ignored --nocapture`).
//! Compares acks=fsync appends with the "1 MiB write + fdatasync" baseline.

mod storage_util;

use ringmq_shards::{
    cache::TailCache,
    io::OpenMode,
    log::{Acks, LogConfig, PartitionLog},
};
use std::time::Instant;
use storage_util::*;

const TOTAL_BYTES: usize = 1 << 30;

#[test]
#[ignore]
fn bench_fsync_appends_vs_write_fdatasync_baseline() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move {
            // Baseline: 1 MiB write + fdatasync, one at a time.
            let storage = storage();
            let f = storage.open(&path.join("baseline"), OpenMode::CreateTruncate).await.unwrap();
            let start = Instant::now();
            let mut pos = 0u64;
            while (pos as usize) < TOTAL_BYTES / 2 {
                let mut buf = f.alloc_buf(1 << 20);
                buf.as_mut_slice().fill(1);
                f.write_at(buf, pos).await.unwrap();
                f.fdatasync().await.unwrap();
                pos += 1 << 20;
            }
            let base_mbs = pos as f64 / start.elapsed().as_secs_f64() / 1e6;
            println!("baseline 1 MiB write + fdatasync: {base_mbs:.0} MB/s");
            f.close().await.unwrap();
            storage.remove_file(&path.join("baseline")).await.unwrap();

            for (producers, batch) in [(16usize, 64usize << 10), (64, 256 << 10), (8, 1 << 20)] {
                let dir = path.join(format!("log-{producers}-{batch}"));
                let config = LogConfig {
                    segment_bytes: 1 << 30,
                    max_queued_bytes: 64 << 20,
                    max_write_bytes: std::env::var("MAX_WRITE").map_or(4 << 20, |v| v.parse().unwrap()),
                    ..LogConfig::default()
                };
                let log = PartitionLog::open(storage.clone(), &dir, config, TailCache::new(64 << 20))
                    .await
                    .unwrap();
                let template = make_batch(100, batch - 61, 0);
                let start = Instant::now();
                let per = TOTAL_BYTES / producers / batch;
                let mut tasks = Vec::new();
                for _ in 0..producers {
                    let log = log.clone();
                    let template = template.clone();
                    tasks.push(glommio::spawn_local(async move {
                        for _ in 0..per {
                            log.reserve(template.len()).await.unwrap();
                            let r = log.append(template.clone(), Acks::Fsync).unwrap();
                            r.durable.await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
                let secs = start.elapsed().as_secs_f64();
                let stats = log.stats();
                let mbs = stats.bytes_appended as f64 / secs / 1e6;
                println!(
                    "acks=fsync {producers} producers x {} KiB batches: {mbs:.0} MB/s ({:.1}x baseline), \
                     {} appends, {} writes, {} fdatasyncs ({:.1} MiB per fdatasync)",
                    batch >> 10,
                    mbs / base_mbs,
                    stats.appends,
                    stats.writes,
                    stats.fdatasyncs,
                    stats.bytes_appended as f64 / stats.fdatasyncs.max(1) as f64 / (1 << 20) as f64
                );
                log.delete().await.unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
