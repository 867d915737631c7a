"""Kafka producer throughput against ringmq's Kafka listener (BENCHMARKS.md;
not a test). A confluent-kafka (librdkafka) producer sends COUNT messages of
SIZE bytes to TOPIC as fast as it can and waits for every acknowledgement.

  target/kafka-venv/bin/python tests/kafka/producer_bench.py \\
      --bootstrap 127.0.0.1:9092 --topic bench --count 1000000 --size 100 --acks all

Prints one JSON line:

  {"ok", "messages", "size", "bytes", "acks", "idempotent", "compression",
   "linger_ms", "batch_size", "delivered", "errors", "elapsed_s",
   "msgs_per_s", "mb_per_s"}

MB/s counts payload bytes (values, no keys) in units of 10^6 bytes; the
clock runs from the first produce() to the last acknowledgement.
"""

import argparse
import os
import sys
import time

from confluent_kafka import Producer

from kafkatest import finish, log


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--acks", default="all", help="0, 1 or all")
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--debug", default="")
    args = ap.parse_args()

    config = {
        "bootstrap.servers": args.bootstrap,
        "client.id": "ringmq-producer-bench",
        "acks": args.acks,
        "enable.idempotence": args.idempotent,
        "compression.type": args.compression,
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_size,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    if args.debug:
        config["debug"] = args.debug
    producer = Producer(config)
    # Random bytes, so compression has nothing to gain.
    payload = os.urandom(args.size)
    delivered = 0
    errors = 0

    def on_delivery(err, _msg):
        nonlocal delivered, errors
        if err is None:
            delivered += 1
        else:
            errors += 1
            if errors <= 5:
                log(f"delivery failed: {err}")

    # Metadata first, so connecting is not timed.
    producer.list_topics(args.topic, timeout=10)
    started = time.monotonic()
    for i in range(args.count):
        while True:
            try:
                producer.produce(args.topic, value=payload, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(args.timeout)
    elapsed = time.monotonic() - started
    total = args.count * args.size
    result = {
        "messages": args.count,
        "size": args.size,
        "bytes": total,
        "acks": args.acks,
        "idempotent": args.idempotent,
        "compression": args.compression,
        "linger_ms": args.linger_ms,
        "batch_size": args.batch_size,
        "delivered": delivered,
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(delivered / elapsed, 1) if elapsed > 0 else None,
        "mb_per_s": round(delivered * args.size / elapsed / 1e6, 2) if elapsed > 0 else None,
    }
    finish(result, remaining == 0 and errors == 0)


if __name__ == "__main__":
    sys.exit(main())
