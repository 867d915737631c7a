//! `ringmq-torture`: crash-consistency torture of a real broker.
//!
//! Starts and owns a `ringmq` process; producer threads write
//! self-describing messages (producer id, sequence number, checksum) at the
//! chosen durability; the broker is SIGKILLed at random instants and
//! restarted, again and again; finally every partition is read back from
//! offset 0 and checked against the history of every send: acknowledged
//! messages lost (told apart as storage or read-path losses by scanning the
//! data files), duplicated, reordered, offsets holding something other than
//! what was acknowledged there, and records nobody sent.
//!
//! `--sabotage` is the negative control: once, while the broker is down,
//! it cuts the tail off a partition's active segment, and the checker must
//! then report acknowledged-but-lost messages.

pub mod broker;
pub mod checker;
pub mod files;
pub mod history;
pub mod message;
pub mod rng;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmq_client::{Acks, Client, ClientConfig};
use serde_json::json;

use broker::BrokerProcess;
use checker::CheckReport;
use history::{HistoryLog, ProducerHistory};
use rng::Rng;

/// Marks a work directory as ours (so a later run may wipe it).
pub const MARKER: &str = ".ringmq-torture";
pub const TOPIC: &str = "torture";

#[derive(Debug, Clone)]
pub struct Config {
    pub broker_bin: PathBuf,
    /// Work directory: broker data in `DIR/data`, its log in `DIR/broker.log`.
    pub dir: PathBuf,
    pub shards: u16,
    pub partitions: u32,
    pub producers: u64,
    pub acks: Acks,
    pub message_size: usize,
    pub segment_bytes: u64,
    pub cycles: u64,
    pub min_ms: u64,
    pub max_ms: u64,
    /// Clean phase after the last restart, before producers stop.
    pub final_ms: u64,
    pub seed: u64,
    pub history: Option<PathBuf>,
    pub sabotage: bool,
    pub sabotage_bytes: u64,
    pub port_range: (u16, u16),
    pub window: usize,
    pub linger_ms: u64,
    pub request_timeout_ms: u64,
    pub start_timeout: Duration,
    pub read_timeout: Duration,
    pub broker_args: Vec<String>,
    /// Progress lines to stderr every this many cycles (0: none).
    pub progress_every: u64,
}

/// Counts of sends by outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendCounts {
    pub invoked: u64,
    pub acked: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// Restart durations (SIGKILL → `/health` 200), milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestartStats {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl RestartStats {
    pub fn from(samples: &[f64]) -> RestartStats {
        if samples.is_empty() {
            return RestartStats::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        RestartStats {
            count: s.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub config: Config,
    pub cycles_completed: u64,
    pub sends: SendCounts,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub restart: RestartStats,
    pub check: Option<CheckReport>,
    pub sabotage: Option<files::Sabotage>,
    pub clean_shutdown: bool,
    pub verify_errors: usize,
    pub verify_warnings: usize,
    pub verify_problems: Vec<String>,
    pub elapsed: Duration,
    /// Why the run stopped early (no check then).
    pub error: Option<String>,
}

impl Report {
    /// The run found nothing wrong (and ran to completion).
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.check.as_ref().is_some_and(|c| c.violations() == 0)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.config;
        let check = self.check.as_ref().map(|k| {
            json!({
                "lost": k.lost,
                "lost_storage": k.lost_storage,
                "lost_read_path": k.lost_read_path,
                "lost_unclassified": k.lost_unclassified,
                "duplicated": k.duplicated,
                "reordered": k.reordered,
                "inconsistent": k.inconsistent,
                "unexpected": k.unexpected,
                "acked_survived": k.acked_survived,
                "failed_survived": k.failed_survived,
                "unknown_survived": k.unknown_survived,
                "records_read": k.records_read,
                "offset_gaps": k.offset_gaps,
                "unreadable_partitions": k.unreadable_partitions.iter()
                    .map(|(p, e)| json!({"partition": p, "error": e})).collect::<Vec<_>>(),
                "examples": k.examples,
            })
        });
        let k = self.check.clone().unwrap_or_default();
        json!({
            "ok": self.ok(),
            "seed": c.seed,
            "cycles": self.cycles_completed,
            "cycles_requested": c.cycles,
            "lost": k.lost,
            "lost_storage": k.lost_storage,
            "lost_read_path": k.lost_read_path,
            "duplicated": k.duplicated,
            "reordered": k.reordered,
            "inconsistent": k.inconsistent,
            "unexpected": k.unexpected,
            "survived_unacked": k.failed_survived + k.unknown_survived,
            "messages": {
                "sent": self.sends.invoked,
                "acked": self.sends.acked,
                "failed": self.sends.failed,
                "unknown": self.sends.unknown,
            },
            "errors": self.errors,
            "restart_ms": {
                "count": self.restart.count,
                "p50": round2(self.restart.p50),
                "p99": round2(self.restart.p99),
                "max": round2(self.restart.max),
                "mean": round2(self.restart.mean),
            },
            "check": check,
            "sabotage": self.sabotage.as_ref().map(|s| json!({
                "cycle": s.cycle,
                "partition": s.partition,
                "segment": s.segment.display().to_string(),
                "data_bytes_before": s.data_bytes_before,
                "file_bytes_before": s.file_bytes_before,
                "bytes_after": s.bytes_after,
            })),
            "clean_shutdown": self.clean_shutdown,
            "log_verify": {
                "errors": self.verify_errors,
                "warnings": self.verify_warnings,
                "problems": self.verify_problems,
            },
            "parameters": {
                "shards": c.shards,
                "partitions": c.partitions,
                "producers": c.producers,
                "acks": acks_name(c.acks),
                "message_size": c.message_size,
                "segment_bytes": c.segment_bytes,
                "min_ms": c.min_ms,
                "max_ms": c.max_ms,
                "final_ms": c.final_ms,
                "window": c.window,
                "sabotage": c.sabotage,
                "dir": c.dir.display().to_string(),
            },
            "elapsed_s": round2(self.elapsed.as_secs_f64()),
            "error": self.error,
        })
    }

    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "ringmq-torture seed {} | {} of {} kill cycles in {:.1} s | {} shards, {} partitions, {} producers, acks {}",
            c.seed, self.cycles_completed, c.cycles, self.elapsed.as_secs_f64(), c.shards,
            c.partitions, c.producers, acks_name(c.acks)
        );
        let _ = writeln!(
            s,
            "messages: {} sent, {} acked, {} failed, {} unknown",
            self.sends.invoked, self.sends.acked, self.sends.failed, self.sends.unknown
        );
        let _ = writeln!(
            s,
            "restart (kill -> healthy): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms ({} restarts)",
            self.restart.p50, self.restart.p99, self.restart.max, self.restart.mean, self.restart.count
        );
        if let Some(sab) = &self.sabotage {
            let _ = writeln!(
                s,
                "sabotage at cycle {}: partition {} segment {} cut from {} to {} bytes",
                sab.cycle,
                sab.partition,
                sab.segment.display(),
                sab.data_bytes_before,
                sab.bytes_after
            );
        }
        if let Some(k) = &self.check {
            let _ = writeln!(
                s,
                "check: lost {} (storage {}, read path {}), duplicated {}, reordered {}, inconsistent {}, unexpected {}",
                k.lost, k.lost_storage, k.lost_read_path, k.duplicated, k.reordered, k.inconsistent, k.unexpected
            );
            let _ = writeln!(
                s,
                "info: {} records read, {} acked survived, {} failed survived, {} unknown survived, {} offset gaps",
                k.records_read, k.acked_survived, k.failed_survived, k.unknown_survived, k.offset_gaps
            );
            for (p, e) in &k.unreadable_partitions {
                let _ = writeln!(s, "partition {p} not fully read: {e}");
            }
            for e in &k.examples {
                let _ = writeln!(s, "  {e}");
            }
        }
        let _ = writeln!(
            s,
            "log verify after clean shutdown ({}): {} errors, {} warnings",
            if self.clean_shutdown {
                "exit 0"
            } else {
                "NOT clean"
            },
            self.verify_errors,
            self.verify_warnings
        );
        for p in &self.verify_problems {
            let _ = writeln!(s, "  {p}");
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "run stopped early: {e}");
        }
        let _ = write!(
            s,
            "{}",
            if self.ok() {
                "RESULT: OK"
            } else {
                "RESULT: FAILED"
            }
        );
        s
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::None => "none",
        Acks::Leader => "leader",
        Acks::Fsync => "fsync",
    }
}

/// Runs the whole torture: start, cycles, final phase, read-back, check.
/// `Err` only when the run could not start at all.
pub fn run(config: &Config) -> Result<Report, String> {
    let started = Instant::now();
    broker::prepare_work_dir(&config.dir, MARKER)?;
    let data_dir = config.dir.join("data");
    let port_seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let ports = broker::pick_ports(
        config.port_range.0,
        config.port_range.1,
        config.shards,
        port_seed,
    )?;
    let mut broker = BrokerProcess::new(
        config.broker_bin.clone(),
        data_dir.clone(),
        config.dir.join("broker.log"),
        ports,
        config.shards,
        config.broker_args.clone(),
    );
    broker.start(config.start_timeout)?;
    let admin_client =
        Client::connect(ClientConfig::new(broker.addr())).map_err(|e| format!("connect: {e}"))?;
    admin_client
        .admin()
        .create_topic(
            TOPIC,
            config.partitions,
            &[(
                "segment.bytes".to_string(),
                config.segment_bytes.to_string(),
            )],
        )
        .map_err(|e| format!("create topic: {e}"))?;
    drop(admin_client);

    let history_log = HistoryLog::open(config.history.as_deref())
        .map_err(|e| format!("cannot write the history file: {e}"))?;
    let log = history_log.sink();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(workload::Progress::default());
    let workload_config = workload::WorkloadConfig {
        bootstrap: broker.addr(),
        topic: TOPIC.to_string(),
        partitions: config.partitions,
        acks: config.acks,
        message_size: config.message_size,
        window: config.window,
        linger_ms: config.linger_ms,
        request_timeout_ms: config.request_timeout_ms,
        seed: config.seed,
    };
    let producers =
        workload::spawn_producers(config.producers, &workload_config, &stop, &progress, &log);

    let mut rng = Rng::derive(config.seed, 1);
    let sabotage_cycle = config.cycles / 2;
    let mut sabotage = None;
    let mut restarts = Vec::with_capacity(config.cycles as usize);
    let mut error = None;
    let mut cycles_completed = 0;
    for cycle in 0..config.cycles {
        let delay = rng.range(config.min_ms, config.max_ms);
        std::thread::sleep(Duration::from_millis(delay));
        let killed = Instant::now();
        broker.kill9();
        log.event(format_args!("\"ev\":\"kill\",\"cycle\":{cycle}"));
        if config.sabotage && cycle == sabotage_cycle {
            match files::sabotage(
                &data_dir,
                TOPIC,
                config.partitions,
                config.sabotage_bytes,
                rng.next_u64(),
                cycle,
            ) {
                Ok(s) => sabotage = Some(s),
                Err(e) => {
                    error = Some(format!("sabotage failed: {e}"));
                }
            }
        }
        if let Err(e) = broker.start(config.start_timeout) {
            error = Some(format!(
                "restart after kill {cycle} failed: {e}\n{}",
                broker.log_tail(4000)
            ));
            break;
        }
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        restarts.push(ms);
        log.event(format_args!(
            "\"ev\":\"healthy\",\"cycle\":{cycle},\"restart_ms\":{ms:.3}"
        ));
        cycles_completed = cycle + 1;
        if config.progress_every > 0 && cycles_completed % config.progress_every == 0 {
            let r = RestartStats::from(&restarts);
            eprintln!(
                "ringmq-torture: cycle {cycles_completed}/{} t={:.0}s sent={} acked={} failed={} unknown={} restart p50={:.1}ms p99={:.1}ms",
                config.cycles,
                started.elapsed().as_secs_f64(),
                progress.invoked.load(Ordering::Relaxed),
                progress.acked.load(Ordering::Relaxed),
                progress.failed.load(Ordering::Relaxed),
                progress.unknown.load(Ordering::Relaxed),
                r.p50,
                r.p99
            );
        }
        if error.is_some() {
            break;
        }
    }
    // The clean phase: producers run on an undisturbed broker, then stop.
    if error.is_none() {
        std::thread::sleep(Duration::from_millis(config.final_ms));
    }
    stop.store(true, Ordering::Relaxed);
    let mut histories: Vec<ProducerHistory> = Vec::new();
    for handle in producers {
        match handle.join() {
            Ok(Ok(h)) => histories.push(h),
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(_) => {
                error.get_or_insert("a producer thread panicked".into());
            }
        }
    }
    drop(log);
    if let Err(e) = history_log.finish() {
        error.get_or_insert(format!("history file: {e}"));
    }
    let mut sends = SendCounts::default();
    let mut errors = std::collections::BTreeMap::new();
    for h in &histories {
        sends.invoked += h.entries.len() as u64;
        for e in &h.entries {
            match e.outcome {
                history::Outcome::Acked(_) => sends.acked += 1,
                history::Outcome::Failed => sends.failed += 1,
                history::Outcome::Unknown | history::Outcome::Invoked => sends.unknown += 1,
            }
        }
        for (k, v) in &h.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    let mut check = None;
    let mut reads = Vec::new();
    if error.is_none() && broker.is_running() {
        match Client::connect(ClientConfig::new(broker.addr())) {
            Ok(client) => {
                for p in 0..config.partitions {
                    reads.push(checker::read_partition(
                        &client,
                        TOPIC,
                        p,
                        config.read_timeout,
                    ));
                }
            }
            Err(e) => error = Some(format!("connect for the read-back: {e}")),
        }
    }
    let clean_shutdown = broker.terminate(Duration::from_secs(60));
    if error.is_none() {
        check = Some(checker::check(&histories, &reads, &data_dir, TOPIC));
    }
    let verify = ringmq_shards::log::verify::verify_dir(&data_dir);
    let verify_problems = verify
        .partitions
        .iter()
        .flat_map(|p| p.problems.iter())
        .take(20)
        .map(|p| {
            format!(
                "{:?} {}{}: {}",
                p.severity,
                p.file.display(),
                p.position.map(|x| format!(" @{x}")).unwrap_or_default(),
                p.message
            )
        })
        .collect();
    Ok(Report {
        config: config.clone(),
        cycles_completed,
        sends,
        errors,
        restart: RestartStats::from(&restarts),
        check,
        sabotage,
        clean_shutdown,
        verify_errors: verify.errors(),
        verify_warnings: verify.warnings(),
        verify_problems,
        elapsed: started.elapsed(),
        error,
    })
}
