//! `ringctl produce TOPIC`: one message per stdin line.
//!
//! With `--key-separator SEP`, the key is the text before the first SEP and
//! the value the text after (a line without SEP has no key). The line ending
//! (`\n` or `\r\n`) is not part of the message. Exits 0 once every message is
//! acknowledged; otherwise prints the failures to stderr and exits 1.
//! `--verbose` prints `PARTITION OFFSET` per message, in input order
//! (offset -1 with `--acks none`).

use std::collections::VecDeque;
use std::io::{BufRead, Write};

use bytes::Bytes;
use ringmq_client::{
    Acks, ClientError, Compression, Producer, ProducerConfig, ProducerRecord, SendFuture,
};

pub struct ProduceArgs {
    pub topic: String,
    pub key_separator: Option<String>,
    pub acks: Acks,
    pub partition: Option<u32>,
    pub compression: Compression,
    pub verbose: bool,
}

/// At most this many failures are printed one by one.
const MAX_REPORTED_FAILURES: usize = 10;

struct Outcome {
    acknowledged: u64,
    failed: u64,
    first_failures: Vec<String>,
}

pub fn run(client_config: ringmq_client::ClientConfig, args: &ProduceArgs) -> i32 {
    let config = ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        ..ProducerConfig::default()
    };
    let producer = match Producer::connect(client_config, config) {
        Ok(p) => p,
        Err(e) => return crate::fail(e),
    };
    let outcome = match send_lines(&producer, args) {
        Ok(o) => o,
        Err(e) => return crate::fail(e),
    };
    producer.close();
    if outcome.failed > 0 {
        for failure in &outcome.first_failures {
            eprintln!("ringctl: {failure}");
        }
        eprintln!(
            "ringctl: {} of {} messages failed",
            outcome.failed,
            outcome.failed + outcome.acknowledged
        );
        return crate::EXIT_RUNTIME_ERROR;
    }
    0
}

fn send_lines(producer: &Producer, args: &ProduceArgs) -> Result<Outcome, String> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut outcome = Outcome {
        acknowledged: 0,
        failed: 0,
        first_failures: Vec::new(),
    };
    // Results in input order; completed ones are popped as we go, so memory
    // stays bounded by what is in flight.
    let mut pending: VecDeque<(u64, SendFuture)> = VecDeque::new();
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            break;
        }
        line_number += 1;
        let record = to_record(args, strip_line_ending(&line));
        pending.push_back((line_number, producer.send(record)));
        while pending.front().is_some_and(|(_, f)| f.is_ready()) {
            let (n, fut) = pending.pop_front().expect("front exists");
            report(n, fut.wait(), args.verbose, &mut out, &mut outcome)?;
        }
    }
    producer.flush();
    for (n, fut) in pending {
        report(n, fut.wait(), args.verbose, &mut out, &mut outcome)?;
    }
    out.flush().or_else(ignore_broken_pipe)?;
    Ok(outcome)
}

fn ignore_broken_pipe(e: std::io::Error) -> Result<(), String> {
    if crate::is_broken_pipe(&e) {
        Ok(())
    } else {
        Err(format!("writing stdout: {e}"))
    }
}

fn report(
    line_number: u64,
    result: Result<ringmq_client::RecordMetadata, ClientError>,
    verbose: bool,
    out: &mut impl Write,
    outcome: &mut Outcome,
) -> Result<(), String> {
    match result {
        Ok(meta) => {
            outcome.acknowledged += 1;
            if verbose {
                writeln!(out, "{} {}", meta.partition, meta.offset).or_else(ignore_broken_pipe)?;
            }
        }
        Err(e) => {
            outcome.failed += 1;
            if outcome.first_failures.len() < MAX_REPORTED_FAILURES {
                outcome
                    .first_failures
                    .push(format!("message on line {line_number} failed: {e}"));
            }
        }
    }
    Ok(())
}

pub fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `line` into key and value at the first separator, if any.
pub fn split_key<'a>(line: &'a [u8], separator: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
        None => (None, line),
    }
}

fn to_record(args: &ProduceArgs, line: &[u8]) -> ProducerRecord {
    let (key, value) = split_key(line, args.key_separator.as_deref().map(str::as_bytes));
    ProducerRecord {
        topic: args.topic.clone(),
        partition: args.partition,
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        assert_eq!(
            split_key(b"k:v:w", Some(b":")),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(split_key(b"novalue", Some(b":")), (None, &b"novalue"[..]));
        assert_eq!(
            split_key(b"a::b", Some(b"::")),
            (Some(&b"a"[..]), &b"b"[..])
        );
        assert_eq!(split_key(b":v", Some(b":")), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_key(b"k:v", None), (None, &b"k:v"[..]));
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
        assert_eq!(strip_line_ending(b"\n"), b"");
    }
}
