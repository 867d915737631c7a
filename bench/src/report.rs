//! What every run reports: the machine it ran on, HDR latency summaries,
//! the live progress line, and the human-readable output.

use std::io::IsTerminal;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The shared time base of every thread in the process: send stamps carried
/// in e2e payloads and intended send times are nanoseconds since it.
static EPOCH: OnceLock<(Instant, i64)> = OnceLock::new();

/// The epoch, and the wall clock (ms since UNIX time) at that instant.
fn epoch_pair() -> (Instant, i64) {
    *EPOCH.get_or_init(|| {
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        (Instant::now(), wall_ms)
    })
}

pub fn epoch() -> Instant {
    epoch_pair().0
}

/// Wall-clock milliseconds (UNIX time) at `ns` since the epoch, without
/// another clock read (record timestamps; cheaper than the client's own
/// per-record `SystemTime::now`).
pub fn wall_ms_at(ns: u64) -> i64 {
    epoch_pair().1 + i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX)
}

/// Nanoseconds since [`epoch`] (monotonic, comparable across threads).
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Highest latency a histogram tracks: one hour in microseconds (larger
/// values are clamped, never dropped).
const MAX_TRACKABLE_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3).expect("valid histogram bounds")
}

/// Records a latency given in nanoseconds.
pub fn record_ns(hist: &mut Histogram<u64>, ns: u64) {
    hist.saturating_record(ns / 1_000);
}

/// `{p50, p90, p99, p999, p9999, max}` in µs; every field `null` when there
/// is nothing to summarise (the keys are always present).
pub fn latency_json(hist: Option<&Histogram<u64>>) -> Value {
    match hist.filter(|h| !h.is_empty()) {
        Some(h) => json!({
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "p9999": h.value_at_quantile(0.9999),
            "max": h.max(),
            "count": h.len(),
        }),
        None => json!({
            "p50": null, "p90": null, "p99": null, "p999": null, "p9999": null,
            "max": null, "count": 0,
        }),
    }
}

/// One line of percentiles for humans.
pub fn latency_line(hist: &Histogram<u64>) -> String {
    if hist.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (µs, {} samples)",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.90),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.value_at_quantile(0.9999),
        hist.max(),
        hist.len()
    )
}

/// The machine and build the numbers come from.
pub struct Environment {
    pub git_revision: String,
    pub nproc: usize,
    pub kernel: String,
}

impl Environment {
    pub fn probe() -> Environment {
        let git_revision = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .or_else(|| {
                Command::new("uname")
                    .arg("-r")
                    .output()
                    .ok()
                    .and_then(|o| String::from_utf8(o.stdout).ok())
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        Environment {
            git_revision,
            nproc,
            kernel,
        }
    }

    /// The common head of every JSON report.
    pub fn json_head(&self, command: &str, durability: Option<&str>, parameters: Value) -> Value {
        json!({
            "command": command,
            "parameters": parameters,
            "git_revision": self.git_revision,
            "nproc": self.nproc,
            "kernel": self.kernel,
            "durability": durability,
        })
    }
}

/// Whether stderr is a terminal (the progress line goes there only then).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A thread that prints `line(elapsed)` to stderr once per second while a
/// run lasts, when stderr is a terminal.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ProgressLine {
    pub fn start(line: impl Fn(Duration) -> String + Send + 'static) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = stderr_is_tty().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut next = start + Duration::from_secs(1);
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        eprintln!("{}", line(now - start));
                        next += Duration::from_secs(1);
                    }
                    std::thread::sleep(
                        Duration::from_millis(50)
                            .min(next.saturating_duration_since(Instant::now())),
                    );
                }
            })
        });
        ProgressLine { stop, handle }
    }

    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `x` rounded for JSON (3 decimals), `null` when not finite.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}
