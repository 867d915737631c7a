//! A quick produce throughput check with the plain client API (the full
//! load tester, with fixed-rate mode and percentiles, is `ringmq-bench`):
//! `cargo run --release -p ringmq-client --example quick_produce --
//! BROKER TOPIC MESSAGES MESSAGE_BYTES ACKS`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringmq_client::producer::{Producer, ProducerConfig, ProducerRecord};
use ringmq_client::{Acks, ClientConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let broker = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let topic = args.get(2).cloned().unwrap_or_else(|| "perf".into());
    let messages: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let message_bytes: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let acks: Acks = args
        .get(5)
        .and_then(|s| s.parse().ok())
        .unwrap_or(Acks::Fsync);
    let config = ProducerConfig {
        acks,
        linger_ms: 5,
        batch_bytes: 1 << 20,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(ClientConfig::new(broker), config).expect("connect");
    let value = Bytes::from(vec![b'x'; message_bytes]);
    let start = Instant::now();
    let failures = Arc::new(AtomicUsize::new(0));
    for _ in 0..messages {
        let failures = failures.clone();
        producer.send_with_callback(
            ProducerRecord::new(topic.clone(), value.clone()).with_partition(0),
            move |result| {
                if result.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            },
        );
    }
    producer.flush();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "some sends failed");
    let secs = start.elapsed().as_secs_f64();
    let mb = (messages * message_bytes) as f64 / 1e6;
    println!(
        "{messages} messages x {message_bytes} B, acks={acks}: {:.0} msg/s, {:.1} MB/s ({secs:.2} s)",
        messages as f64 / secs,
        mb / secs
    );
}
