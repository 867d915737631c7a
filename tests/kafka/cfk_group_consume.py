"""confluent-kafka consumer group: MEMBERS Consumer instances (one thread
each) in group GROUP subscribed to TOPIC, with manual synchronous commits
(enable.auto.commit=False, commit(asynchronous=False) after every batch and
before giving partitions up).

With --ready-file PATH it creates PATH once every member holds partitions
(a test can start producing then, so that every member reads).

It stops when it has seen ids [expect_start, expect_start+expect) (values
`VALUE_PREFIX<id>`) and every member holds partitions, then keeps reading
for --linger seconds to catch anything extra. With --max N (one member) it
processes exactly N messages, commits exactly those and stops.

After the members closed, a separate consumer reads the group's committed
offsets (OffsetFetch) and the log ends. Prints:

  {"ok", "count", "unique", "duplicates", "missing", "first_missing",
   "unexpected", "first_unexpected",
   "members": [{"count", "final_assignment"}] (final: the partitions each
   member held when everything had been seen),
   "committed": {P: offset or null}, "high": {P: end}, "commit_errors",
   "consumed": [[P, offset], ...] (only with --max)}
"""

import argparse
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafkatest import Deadline, add_debug, finish, first, log, value_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--expect", type=int, default=0, help="ids that must be seen")
    ap.add_argument("--expect-start", type=int, default=0)
    ap.add_argument("--value-prefix", default="m-")
    ap.add_argument("--max", type=int, default=0, help="process exactly this many, then stop")
    ap.add_argument("--linger", type=float, default=2.0)
    ap.add_argument("--ready-file", help="created once every member holds partitions")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--debug", default="")
    args = ap.parse_args()
    if args.max and args.members != 1:
        ap.error("--max needs --members 1")

    lock = threading.Lock()
    seen = {}  # id -> times seen
    unexpected = []
    consumed = []
    commit_errors = []
    failures = []
    members = [{"count": 0, "assignment": [], "final_assignment": []} for _ in range(args.members)]
    stop = threading.Event()
    all_seen_at = [None]
    deadline = Deadline(args.timeout)
    expected = range(args.expect_start, args.expect_start + args.expect)

    def satisfied():
        if args.max:
            return False
        missing = any(i not in seen for i in expected)
        return not missing and all(m["assignment"] for m in members)

    def member(index):
        config = {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "client.id": f"ringmq-test-member-{index}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 2000,
        }
        consumer = Consumer(add_debug(config, args.debug))
        pending = {}  # partition -> next offset to commit

        def commit(reason):
            if not pending:
                return
            offsets = [TopicPartition(args.topic, p, o) for p, o in sorted(pending.items())]
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                pending.clear()
            except KafkaException as e:
                with lock:
                    commit_errors.append(f"member {index} ({reason}): {e}")
                log(f"member {index}: commit ({reason}) failed: {e}")

        def on_assign(c, partitions):
            with lock:
                members[index]["assignment"] = sorted(tp.partition for tp in partitions)
                if args.ready_file and all(m["assignment"] for m in members):
                    open(args.ready_file, "a").close()
            log(f"member {index}: assigned {members[index]['assignment']}")

        def on_revoke(c, partitions):
            commit("revoke")
            pending.clear()
            with lock:
                members[index]["assignment"] = []
            log(f"member {index}: revoked {sorted(tp.partition for tp in partitions)}")

        consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                if deadline.passed():
                    with lock:
                        failures.append(f"member {index}: timed out")
                    break
                room = 500
                if args.max:
                    room = min(room, args.max - len(consumed))
                    if room == 0:
                        break
                for msg in consumer.consume(num_messages=room, timeout=0.2):
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            with lock:
                                failures.append(f"member {index}: {msg.error()}")
                            log(f"member {index}: consume error {msg.error()}")
                        continue
                    i = value_id(msg.value(), args.value_prefix)
                    with lock:
                        members[index]["count"] += 1
                        if args.max:
                            consumed.append([msg.partition(), msg.offset()])
                        if i is None:
                            unexpected.append(repr(msg.value()))
                        else:
                            seen[i] = seen.get(i, 0) + 1
                    pending[msg.partition()] = msg.offset() + 1
                commit("batch")
                with lock:
                    if all_seen_at[0] is None and satisfied():
                        all_seen_at[0] = time.monotonic()
                        for m in members:
                            m["final_assignment"] = list(m["assignment"])
                        log(f"member {index}: everything seen, lingering {args.linger}s")
                    if all_seen_at[0] is not None and time.monotonic() - all_seen_at[0] >= args.linger:
                        stop.set()
            if args.max:
                stop.set()
            commit("final")
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            with lock:
                failures.append(f"member {index}: {e!r}")
            log(f"member {index}: {e!r}")
            stop.set()
        finally:
            consumer.close()

    threads = [threading.Thread(target=member, args=(k,)) for k in range(args.members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # The group's committed offsets as the broker now reports them.
    probe = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                      "enable.auto.commit": False})
    metadata = probe.list_topics(args.topic, timeout=10)
    partitions = sorted(metadata.topics[args.topic].partitions)
    committed = {}
    for tp in probe.committed([TopicPartition(args.topic, p) for p in partitions], timeout=10):
        committed[str(tp.partition)] = tp.offset if tp.offset >= 0 else None
        if tp.error:
            failures.append(f"committed offset of partition {tp.partition}: {tp.error}")
    high = {}
    for p in partitions:
        _, hi = probe.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
        high[str(p)] = hi
    probe.close()

    missing = [i for i in expected if i not in seen]
    extra = [i for i in seen if i not in expected]
    result = {
        "count": sum(seen.values()) + len(unexpected),
        "unique": len(seen),
        "duplicates": sum(n - 1 for n in seen.values()),
        "missing": len(missing),
        "first_missing": first(missing),
        "unexpected": len(extra) + len(unexpected),
        "first_unexpected": first(extra) + unexpected[:10],
        "members": members,
        "committed": committed,
        "high": high,
        "commit_errors": commit_errors,
        "failures": failures,
    }
    if args.max:
        result["consumed"] = consumed
    if failures:
        log("failures:", *failures, sep="\n  ")
    ok = not failures and (len(consumed) == args.max if args.max else not missing)
    finish(result, ok)


if __name__ == "__main__":
    sys.exit(main())
