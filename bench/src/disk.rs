//! `disk`: what the storage under the broker can do, through the same path
//! the broker uses (O_DIRECT files on io_uring via glommio's `DmaFile`).
//!
//! * sequential write and read bandwidth: `--block-kib` blocks (1 MiB),
//!   `--depth` (8) in flight, `--size-mib` in all;
//! * the bandwidth of 1 MiB (and 4 MiB) writes each followed by fdatasync
//!   (what a group commit costs at best);
//! * fdatasync latency after a small (4 KiB) write.
//!
//! The files go to `--dir` (default `./target/bench-disk`: put it on the
//! broker's filesystem) and are removed afterwards.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use serde_json::{json, Value};

use crate::report::{latency_json, latency_line, new_histogram, num, record_ns, Environment};

#[derive(clap::Args, Debug, Clone)]
pub struct DiskArgs {
    /// Directory for the test files (same filesystem as the broker data).
    #[arg(long, default_value = "target/bench-disk")]
    pub dir: PathBuf,
    /// Bytes written (then read) sequentially, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Block size of the sequential tests, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub block_kib: u64,
    /// Blocks in flight in the sequential tests.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// 1 MiB writes each followed by fdatasync (the 4 MiB test writes a
    /// quarter as many 4 MiB blocks).
    #[arg(long, default_value_t = 256)]
    pub fsync_writes: u64,
    /// Small (4 KiB) write + fdatasync rounds for the latency percentiles.
    #[arg(long, default_value_t = 500)]
    pub fsync_count: u64,
    /// Print one JSON object instead of the human-readable summary.
    #[arg(long)]
    pub json: bool,
}

type BenchResult<T> = std::result::Result<T, String>;

/// Removes the files it names when dropped (also on errors).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug, Default)]
struct DiskResults {
    write_mb_per_sec: f64,
    read_mb_per_sec: f64,
    write_fsync_1mib_mb_per_sec: f64,
    write_fsync_4mib_mb_per_sec: f64,
    final_fdatasync_ms: f64,
    fdatasync_hist: Option<hdrhistogram::Histogram<u64>>,
    bytes: u64,
}

pub fn run(args: &DiskArgs) -> BenchResult<i32> {
    if args.size_mib == 0 || args.block_kib == 0 || args.depth == 0 {
        return Err("--size-mib, --block-kib and --depth must be at least 1".into());
    }
    if args.block_kib & 3 != 0 {
        return Err("--block-kib must be a multiple of 4 (O_DIRECT alignment)".into());
    }
    let env = Environment::probe();
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("create {}: {e}", args.dir.display()))?;
    let pid = std::process::id();
    let name = |what: &str| args.dir.join(format!(".ringmq-bench-{what}-{pid}"));
    let paths = Paths {
        probe: name("probe"),
        seq: name("seq"),
        sync: name("sync"),
        small: name("small"),
    };
    let _cleanup = Cleanup(vec![
        paths.probe.clone(),
        paths.seq.clone(),
        paths.sync.clone(),
        paths.small.clone(),
    ]);
    let a = args.clone();
    let results = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-disk")
        // memlock is 8 MiB here: keep glommio's registered buffers small.
        .io_memory(2 << 20)
        .spawn(move || async move { run_all(&a, &paths).await })
        .map_err(|e| format!("start the glommio executor: {e}"))?
        .join()
        .map_err(|e| format!("the disk executor failed: {e}"))??;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&to_json(args, &env, &results)).expect("serialisable")
        );
    } else {
        print(args, &results);
    }
    Ok(0)
}

struct Paths {
    probe: PathBuf,
    seq: PathBuf,
    sync: PathBuf,
    small: PathBuf,
}

fn io_err<T: std::fmt::Display>(what: &str, path: &Path) -> impl FnOnce(T) -> String {
    let what = format!("{what} {}", path.display());
    move |e| format!("{what}: {e}")
}

/// glommio decides per device and thread whether O_DIRECT reads may use
/// the io_uring poll ring by reading the first file it opens there; an
/// empty file makes it wrongly enable IOPOLL and later reads fail with
/// EOPNOTSUPP (virtio). So open a one-block file first.
async fn probe_device(path: &Path) -> BenchResult<()> {
    std::fs::write(path, vec![0u8; 4096]).map_err(io_err("write probe", path))?;
    let f = OpenOptions::new()
        .read(true)
        .dma_open(path)
        .await
        .map_err(io_err("open probe", path))?;
    let _ = f.close().await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn create(path: &Path) -> BenchResult<Rc<DmaFile>> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map(Rc::new)
        .map_err(io_err("create (O_DIRECT)", path))
}

fn filled(file: &DmaFile, size: usize, seed: u8) -> Rc<glommio::io::DmaBuffer> {
    let mut buf = file.alloc_dma_buffer(size);
    for (i, b) in buf.as_bytes_mut().iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
    Rc::new(buf)
}

async fn run_all(args: &DiskArgs, paths: &Paths) -> BenchResult<DiskResults> {
    probe_device(&paths.probe).await?;
    let mut r = DiskResults::default();
    let block = (args.block_kib * 1024) as usize;
    let blocks = (args.size_mib * 1024 * 1024).div_ceil(block as u64);
    let total = blocks * block as u64;
    r.bytes = total;

    // Sequential write, `depth` in flight: task k writes blocks k, k+depth, ...
    let file = create(&paths.seq).await?;
    let failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.depth)
        .map(|k| {
            let (file, failed) = (file.clone(), failed.clone());
            let buf = filled(&file, block, k as u8);
            let depth = args.depth as u64;
            glommio::spawn_local(async move {
                let mut b = k as u64;
                while b < blocks {
                    match file.write_rc_at(buf.clone(), b * block as u64).await {
                        Ok(n) if n == block => {}
                        Ok(n) => {
                            failed.set(Some(format!("short write: {n} of {block} bytes")));
                            return;
                        }
                        Err(e) => {
                            failed.set(Some(format!("write: {e}")));
                            return;
                        }
                    }
                    b += depth;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let write_s = start.elapsed().as_secs_f64();
    if let Some(e) = failed.take() {
        return Err(e);
    }
    let sync_start = Instant::now();
    file.fdatasync()
        .await
        .map_err(io_err("fdatasync", &paths.seq))?;
    r.final_fdatasync_ms = sync_start.elapsed().as_secs_f64() * 1e3;
    r.write_mb_per_sec = total as f64 / 1e6 / write_s;

    // Sequential read of the same file.
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.depth)
        .map(|k| {
            let (file, failed) = (file.clone(), failed.clone());
            let depth = args.depth as u64;
            glommio::spawn_local(async move {
                let mut b = k as u64;
                while b < blocks {
                    match file.read_at_aligned(b * block as u64, block).await {
                        Ok(res) if res.len() == block => {}
                        Ok(res) => {
                            failed.set(Some(format!("short read: {} of {block} bytes", res.len())));
                            return;
                        }
                        Err(e) => {
                            failed.set(Some(format!("read: {e}")));
                            return;
                        }
                    }
                    b += depth;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let read_s = start.elapsed().as_secs_f64();
    if let Some(e) = failed.take() {
        return Err(e);
    }
    r.read_mb_per_sec = total as f64 / 1e6 / read_s;
    drop(file);
    let _ = std::fs::remove_file(&paths.seq);

    // Write + fdatasync, one at a time.
    for (size, count) in [
        (1usize << 20, args.fsync_writes),
        (4 << 20, args.fsync_writes.div_ceil(4)),
    ] {
        let file = create(&paths.sync).await?;
        let buf = filled(&file, size, 7);
        let start = Instant::now();
        for i in 0..count {
            let n = file
                .write_rc_at(buf.clone(), i * size as u64)
                .await
                .map_err(io_err("write", &paths.sync))?;
            if n != size {
                return Err(format!("short write: {n} of {size} bytes"));
            }
            file.fdatasync()
                .await
                .map_err(io_err("fdatasync", &paths.sync))?;
        }
        let mbps = (count * size as u64) as f64 / 1e6 / start.elapsed().as_secs_f64();
        if size == 1 << 20 {
            r.write_fsync_1mib_mb_per_sec = mbps;
        } else {
            r.write_fsync_4mib_mb_per_sec = mbps;
        }
        drop(file);
        let _ = std::fs::remove_file(&paths.sync);
    }

    // fdatasync latency after a small append.
    let file = create(&paths.small).await?;
    let buf = filled(&file, 4096, 3);
    let mut hist = new_histogram();
    for i in 0..args.fsync_count {
        file.write_rc_at(buf.clone(), i * 4096)
            .await
            .map_err(io_err("write", &paths.small))?;
        let t = Instant::now();
        file.fdatasync()
            .await
            .map_err(io_err("fdatasync", &paths.small))?;
        record_ns(&mut hist, t.elapsed().as_nanos() as u64);
    }
    r.fdatasync_hist = Some(hist);
    Ok(r)
}

fn to_json(args: &DiskArgs, env: &Environment, r: &DiskResults) -> Value {
    let parameters = json!({
        "dir": args.dir.display().to_string(),
        "size_mib": args.size_mib,
        "block_kib": args.block_kib,
        "depth": args.depth,
        "fsync_writes": args.fsync_writes,
        "fsync_count": args.fsync_count,
    });
    let mut report = env.json_head("disk", None, parameters);
    let obj = report.as_object_mut().expect("an object");
    obj.insert(
        "disk".into(),
        json!({
            "write_mb_per_sec": num(r.write_mb_per_sec),
            "read_mb_per_sec": num(r.read_mb_per_sec),
            "write_fsync_1mib_mb_per_sec": num(r.write_fsync_1mib_mb_per_sec),
            "write_fsync_4mib_mb_per_sec": num(r.write_fsync_4mib_mb_per_sec),
            "final_fdatasync_ms": num(r.final_fdatasync_ms),
            "fdatasync_latency_us": latency_json(r.fdatasync_hist.as_ref()),
            "bytes": r.bytes,
        }),
    );
    obj.insert(
        "throughput".into(),
        json!({ "msgs_per_sec": null, "mb_per_sec": num(r.write_mb_per_sec) }),
    );
    obj.insert("latency_us".into(), latency_json(None));
    report
}

fn print(args: &DiskArgs, r: &DiskResults) {
    println!(
        "ringmq-bench disk: {} ({} MiB, {} KiB blocks, {} in flight, O_DIRECT via io_uring)",
        args.dir.display(),
        args.size_mib,
        args.block_kib,
        args.depth
    );
    println!(
        "  sequential write: {:.1} MB/s (then fdatasync {:.1} ms)",
        r.write_mb_per_sec, r.final_fdatasync_ms
    );
    println!("  sequential read:  {:.1} MB/s", r.read_mb_per_sec);
    println!(
        "  write + fdatasync each: 1 MiB {:.1} MB/s, 4 MiB {:.1} MB/s",
        r.write_fsync_1mib_mb_per_sec, r.write_fsync_4mib_mb_per_sec
    );
    if let Some(h) = &r.fdatasync_hist {
        println!("  fdatasync after a 4 KiB write: {}", latency_line(h));
    }
}
