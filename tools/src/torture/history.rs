//! What every producer did: one entry per message (indexed by sequence
//! number), plus an optional JSONL log of events as they happen.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use ringmq_client::ClientError;
use ringmq_wire::error::ErrorCode;

/// What became of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the client, no answer yet.
    Invoked,
    /// Acknowledged at this offset.
    Acked(i64),
    /// A definite failure: the broker refused it, or it never left the client.
    Failed,
    /// No answer that says either way (the connection broke, the request
    /// timed out): it may or may not be in the log.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct SendEntry {
    pub partition: u32,
    pub outcome: Outcome,
}

/// One producer's history: `entries[seq]`.
#[derive(Debug, Default, Clone)]
pub struct ProducerHistory {
    pub producer: u64,
    pub entries: Vec<SendEntry>,
    /// Error kinds seen (`api:partition_fenced`, `io`, ...) and how often.
    pub errors: BTreeMap<String, u64>,
}

/// Failed or unknown, and a short kind for the error histogram.
pub fn classify(error: &ClientError) -> (Outcome, String) {
    match error {
        ClientError::Api { error, .. } => {
            let outcome = if error.code == ErrorCode::RequestTimedOut {
                Outcome::Unknown
            } else {
                Outcome::Failed
            };
            (outcome, format!("api:{}", error.code.name()))
        }
        // Refused at connect: nothing was sent.
        ClientError::Io { message, .. } if message.contains("refused") => {
            (Outcome::Failed, "io:refused".into())
        }
        ClientError::Io { .. } => (Outcome::Unknown, "io".into()),
        ClientError::Disconnected { .. } => (Outcome::Unknown, "disconnected".into()),
        // Waiting for buffer space: the record was never queued.
        ClientError::Timeout { what, .. } if what.starts_with("buffer space") => {
            (Outcome::Failed, "timeout:buffer".into())
        }
        ClientError::Timeout { .. } => (Outcome::Unknown, "timeout".into()),
        ClientError::Protocol { .. } => (Outcome::Unknown, "protocol".into()),
        ClientError::UnknownTopic { .. } => (Outcome::Failed, "unknown_topic".into()),
        ClientError::UnknownPartition { .. } => (Outcome::Failed, "unknown_partition".into()),
        ClientError::OffsetOutOfRange { .. } => (Outcome::Failed, "offset_out_of_range".into()),
        ClientError::InvalidArgument(_) => (Outcome::Failed, "invalid_argument".into()),
        ClientError::Closed(_) => (Outcome::Failed, "closed".into()),
    }
}

/// Writes history events as JSON lines from a background thread.
pub struct HistoryLog {
    tx: Option<mpsc::Sender<String>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    start: Instant,
}

/// A cheap handle producers use to log events (a no-op without `--history`).
#[derive(Clone)]
pub struct HistorySink {
    tx: Option<mpsc::Sender<String>>,
    start: Instant,
}

impl HistoryLog {
    pub fn open(path: Option<&Path>) -> std::io::Result<HistoryLog> {
        let start = Instant::now();
        let Some(path) = path else {
            return Ok(HistoryLog {
                tx: None,
                thread: None,
                start,
            });
        };
        let file = std::fs::File::create(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("torture-history".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(1 << 20, file);
                for line in rx {
                    out.write_all(line.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                out.flush()
            })?;
        Ok(HistoryLog {
            tx: Some(tx),
            thread: Some(thread),
            start,
        })
    }

    pub fn sink(&self) -> HistorySink {
        HistorySink {
            tx: self.tx.clone(),
            start: self.start,
        }
    }

    /// Flushes and closes the file (every sink must be dropped first for
    /// the writer to see the end; lines sent later are lost).
    pub fn finish(mut self) -> std::io::Result<()> {
        self.tx.take();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("history writer panicked"))),
            None => Ok(()),
        }
    }
}

impl HistorySink {
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Logs one event: `fields` is a JSON object (without braces) to which
    /// `t_us` (microseconds since the start) is added.
    pub fn event(&self, fields: std::fmt::Arguments<'_>) {
        if let Some(tx) = &self.tx {
            let t = self.start.elapsed().as_micros();
            let _ = tx.send(format!("{{\"t_us\":{t},{fields}}}"));
        }
    }
}

/// JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
