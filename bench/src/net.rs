//! `net`: loopback TCP bandwidth between two threads of this process, one
//! stream, large writes: the ceiling for anything the broker sends over
//! loopback on this machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::report::{latency_json, num, Environment};

#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// Seconds to send for (ignored with --size-mib).
    #[arg(long, default_value_t = 5.0)]
    pub duration_s: f64,
    /// Send exactly this many MiB instead of for a duration.
    #[arg(long)]
    pub size_mib: Option<u64>,
    /// Bytes per write call, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub write_kib: usize,
    /// Print one JSON object instead of the human-readable summary.
    #[arg(long)]
    pub json: bool,
}

type BenchResult<T> = std::result::Result<T, String>;

pub fn run(args: &NetArgs) -> BenchResult<i32> {
    if args.write_kib == 0 {
        return Err("--write-kib must be at least 1".into());
    }
    if args.size_mib.is_none() && !(args.duration_s > 0.0 && args.duration_s.is_finite()) {
        return Err("--duration-s must be positive".into());
    }
    let env = Environment::probe();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok((total, Instant::now())),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let chunk = vec![0x5au8; args.write_kib * 1024];
    let limit_bytes = args.size_mib.map(|m| m * 1024 * 1024);
    let deadline = Duration::from_secs_f64(args.duration_s);
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match limit_bytes {
            Some(limit) if sent >= limit => break,
            Some(limit) => chunk.len().min((limit - sent) as usize),
            None if start.elapsed() >= deadline => break,
            None => chunk.len(),
        };
        stream
            .write_all(&chunk[..n])
            .map_err(|e| format!("write: {e}"))?;
        sent += n as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let (received, end) = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if received != sent {
        return Err(format!("sent {sent} bytes but received {received}"));
    }
    let elapsed = (end - start).as_secs_f64();
    let mbps = received as f64 / 1e6 / elapsed;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&to_json(args, &env, received, elapsed, mbps))
                .expect("serialisable")
        );
    } else {
        println!(
            "ringmq-bench net: loopback TCP, one stream, {} KiB writes: {:.1} MB/s ({:.1} MB in {:.3} s)",
            args.write_kib,
            mbps,
            received as f64 / 1e6,
            elapsed
        );
    }
    Ok(0)
}

fn to_json(args: &NetArgs, env: &Environment, bytes: u64, elapsed: f64, mbps: f64) -> Value {
    let parameters = json!({
        "duration_s": if args.size_mib.is_some() { None } else { Some(args.duration_s) },
        "size_mib": args.size_mib,
        "write_kib": args.write_kib,
    });
    let mut report = env.json_head("net", None, parameters);
    let obj = report.as_object_mut().expect("an object");
    obj.insert(
        "net".into(),
        json!({ "mb_per_sec": num(mbps), "bytes": bytes, "elapsed_s": num(elapsed) }),
    );
    obj.insert(
        "throughput".into(),
        json!({ "msgs_per_sec": null, "mb_per_sec": num(mbps) }),
    );
    obj.insert("latency_us".into(), latency_json(None));
    report
}
