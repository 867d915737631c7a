"""kafka-python round trip: KafkaAdminClient creates TOPIC (CreateTopics) and
lists topics, KafkaProducer sends COUNT keyed messages (acks=all, gzip),
KafkaConsumer in group GROUP reads them back, commits, and lists topics.

The broker version is auto-detected (api_version=None): kafka-python 2.1+
sends ApiVersions and then uses, per request, the highest version both
sides support. Prints:

  {"ok", "api_version", "created", "admin_topics", "consumer_topics",
   "produced", "acked", "consumed", "unique", "missing", "unexpected",
   "committed", "partitions_used"}
"""

import argparse
import sys
import traceback

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from kafkatest import Deadline, finish, first, log, value_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--value-prefix", default="kp-")
    ap.add_argument("--compression", default="gzip")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    deadline = Deadline(args.timeout)
    result = {}
    failures = []

    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="ringmq-test-kp-admin",
                             request_timeout_ms=10000)
    try:
        response = admin.create_topics(
            [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
            timeout_ms=10000)
        result["created"] = True
        log(f"create_topics: {response}")
    except TopicAlreadyExistsError:
        result["created"] = False
    except KafkaError as e:
        result["created"] = False
        failures.append(f"create_topics: {e!r}")
    try:
        result["admin_topics"] = sorted(admin.list_topics())
    except Exception as e:  # noqa: BLE001 - reported, with the traceback
        log(traceback.format_exc())
        failures.append(f"KafkaAdminClient.list_topics(): {e!r}")
        result["admin_topics"] = []
    admin.close()

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, client_id="ringmq-test-kp-producer",
                             acks="all", compression_type=args.compression, linger_ms=5,
                             retries=5, request_timeout_ms=10000)
    result["api_version"] = ".".join(map(str, producer.config["api_version"]))
    futures = []
    for i in range(args.count):
        futures.append(producer.send(args.topic, key=f"kpk{i}".encode(),
                                     value=f"{args.value_prefix}{i}".encode()))
    producer.flush(timeout=deadline.left())
    acked = 0
    partitions_used = set()
    for f in futures:
        try:
            metadata = f.get(timeout=max(0.1, deadline.left()))
            acked += 1
            partitions_used.add(metadata.partition)
        except KafkaError as e:
            if len(failures) < 10:
                failures.append(f"send: {e!r}")
    producer.close()
    result["produced"] = args.count
    result["acked"] = acked
    result["partitions_used"] = sorted(partitions_used)

    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap,
                             client_id="ringmq-test-kp-consumer", group_id=args.group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=10000, heartbeat_interval_ms=1000)
    seen = {}
    unexpected = []
    while len(seen) < args.count and not deadline.passed():
        batches = consumer.poll(timeout_ms=500)
        for records in batches.values():
            for r in records:
                i = value_id(r.value, args.value_prefix)
                if i is None or r.key != f"kpk{i}".encode():
                    unexpected.append(repr((r.key, r.value)))
                else:
                    seen[i] = seen.get(i, 0) + 1
        if batches:
            consumer.commit()
    result["consumer_topics"] = sorted(consumer.topics())
    assignment = sorted(consumer.assignment(), key=lambda tp: tp.partition)
    result["committed"] = {str(tp.partition): consumer.committed(tp) for tp in assignment}
    consumer.close()

    missing = [i for i in range(args.count) if i not in seen]
    result.update({
        "consumed": sum(seen.values()),
        "unique": len(seen),
        "missing": len(missing),
        "first_missing": first(missing),
        "unexpected": len(unexpected),
        "first_unexpected": unexpected[:10],
        "failures": failures,
    })
    if missing:
        log(f"{len(missing)} messages not consumed within {args.timeout}s")
    if failures:
        log("failures:", *failures, sep="\n  ")
    finish(result, not failures and not missing)


if __name__ == "__main__":
    sys.exit(main())
