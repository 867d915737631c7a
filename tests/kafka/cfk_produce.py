"""confluent-kafka producer with delivery reports.

Produces values `VALUE_PREFIX<i>` with keys `KEY_PREFIX<i>` for i in
[start, start+count) and prints:

  {"ok", "produced", "delivered", "errors", "first_errors", "fatal",
   "partitions": {P: {"count", "min", "max", "contiguous"}},
   "contiguous", "elapsed_s"}

`contiguous` is true when, in every partition, the acknowledged offsets
are distinct and without gaps. With --record FILE every acknowledged id is
appended to FILE (one line each, as the acknowledgements arrive), so a
test can see progress and, after a crash, which messages were acknowledged.
"""

import argparse
import sys
import time

from confluent_kafka import KafkaException, Producer

from kafkatest import Deadline, add_debug, finish, log, value_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--key-prefix", default="k")
    ap.add_argument("--no-key", action="store_true")
    ap.add_argument("--value-prefix", default="m-")
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--acks", default="all")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--message-timeout-ms", type=int, default=60000)
    ap.add_argument("--rate", type=float, default=0, help="messages/s, 0: as fast as possible")
    ap.add_argument("--record", help="append each acknowledged id to this file")
    ap.add_argument("--timeout", type=float, default=120, help="seconds for the whole run")
    ap.add_argument("--debug", default="")
    args = ap.parse_args()

    config = {
        "bootstrap.servers": args.bootstrap,
        "client.id": "ringmq-test-producer",
        "acks": args.acks,
        "enable.idempotence": args.idempotent,
        "compression.type": args.compression,
        "linger.ms": args.linger_ms,
        "message.timeout.ms": args.message_timeout_ms,
        # A restarted broker is found again quickly.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 1000,
        "topic.metadata.refresh.interval.ms": 5000,
        # Keys land where Kafka's Java default partitioner puts them.
        "partitioner": "murmur2_random",
    }
    fatal = []

    logged_errors = [0]

    def on_error(err):
        # Connection errors repeat while a broker is down: log the first ones.
        if err.fatal():
            fatal.append(str(err))
        if err.fatal() or logged_errors[0] < 20:
            logged_errors[0] += 1
            log(f"producer error: {err} (fatal={err.fatal()})")

    config["error_cb"] = on_error
    producer = Producer(add_debug(config, args.debug))

    record = open(args.record, "a", buffering=1) if args.record else None
    delivered = 0
    errors = 0
    first_errors = []
    offsets = {}

    def on_delivery(err, msg):
        nonlocal delivered, errors
        if err is not None:
            errors += 1
            if len(first_errors) < 10:
                first_errors.append(f"{err} (value {msg.value()!r})")
            return
        delivered += 1
        offsets.setdefault(msg.partition(), []).append(msg.offset())
        if record is not None:
            record.write(f"{value_id(msg.value(), args.value_prefix)}\n")

    deadline = Deadline(args.timeout)
    started = time.monotonic()
    for n, i in enumerate(range(args.start, args.start + args.count)):
        if args.rate > 0:
            wait = started + n / args.rate - time.monotonic()
            if wait > 0:
                producer.poll(wait)
        key = None if args.no_key else f"{args.key_prefix}{i}".encode()
        value = f"{args.value_prefix}{i}".encode()
        while True:
            try:
                producer.produce(args.topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as e:
                log(f"produce failed: {e}")
                finish({"produced": n, "delivered": delivered, "errors": errors,
                        "first_errors": first_errors + [str(e)], "fatal": fatal}, False)
            if deadline.passed():
                log("timed out while the producer queue was full")
                finish({"produced": n, "delivered": delivered, "errors": errors,
                        "first_errors": first_errors, "fatal": fatal}, False)
        if n % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(deadline.left())
    elapsed = time.monotonic() - started
    if record is not None:
        record.close()

    partitions = {}
    contiguous = True
    for p, offs in sorted(offsets.items()):
        offs.sort()
        ok = len(set(offs)) == len(offs) and offs[-1] - offs[0] + 1 == len(offs)
        contiguous = contiguous and ok
        partitions[str(p)] = {"count": len(offs), "min": offs[0], "max": offs[-1], "contiguous": ok}
    if remaining:
        log(f"{remaining} messages still undelivered when the time ran out")
    if first_errors:
        log("delivery errors:", *first_errors, sep="\n  ")
    result = {
        "produced": args.count,
        "delivered": delivered,
        "undelivered": remaining,
        "errors": errors,
        "first_errors": first_errors,
        "fatal": fatal,
        "partitions": partitions,
        "contiguous": contiguous,
        "elapsed_s": round(elapsed, 3),
    }
    finish(result, remaining == 0 and errors == 0 and not fatal)


if __name__ == "__main__":
    sys.exit(main())
