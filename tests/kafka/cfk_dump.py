"""Reads every partition of TOPIC from the beginning to its current end
with a confluent-kafka consumer (assign, no group membership, no commits)
and writes one JSON object per message to --out:

  {"p": partition, "o": offset, "k": key or null, "v": value}

Prints {"ok", "count", "partitions": {P: {"low", "high", "count"}}}.
"""

import argparse
import json
import sys
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from kafkatest import Deadline, add_debug, finish, log


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--debug", default="")
    args = ap.parse_args()

    consumer = Consumer(add_debug({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"ringmq-test-dump-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }, args.debug))
    deadline = Deadline(args.timeout)
    metadata = consumer.list_topics(args.topic, timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None:
        log(f"topic {args.topic}: {topic.error if topic else 'not in metadata'}")
        finish({"count": 0}, False)
    partitions = sorted(topic.partitions)
    marks = {}
    for p in partitions:
        marks[p] = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])

    counts = {p: 0 for p in partitions}
    # Partitions still to read up to their end.
    todo = {p for p in partitions if marks[p][1] > marks[p][0]}
    failures = []
    with open(args.out, "w") as out:
        while todo and not deadline.passed():
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        failures.append(str(msg.error()))
                        log(f"consume error: {msg.error()}")
                    continue
                p = msg.partition()
                counts[p] += 1
                out.write(json.dumps({"p": p, "o": msg.offset(), "k": text(msg.key()),
                                      "v": text(msg.value())}) + "\n")
                if msg.offset() + 1 >= marks[p][1]:
                    todo.discard(p)
            if failures:
                break
    consumer.close()
    if todo:
        log(f"partitions not read to their end: {sorted(todo)} "
            f"(read {[counts[p] for p in sorted(todo)]}, marks {[marks[p] for p in sorted(todo)]})")
    result = {
        "count": sum(counts.values()),
        "partitions": {str(p): {"low": marks[p][0], "high": marks[p][1], "count": counts[p]}
                       for p in partitions},
        "failures": failures,
    }
    finish(result, not todo and not failures)


if __name__ == "__main__":
    sys.exit(main())
