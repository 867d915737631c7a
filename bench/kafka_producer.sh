#!/bin/bash
# confluent-kafka (librdkafka) producer against ringmq's Kafka port, with the
# native ringmq-bench producer and the loopback TCP baseline in the same run
# (BENCHMARKS.md, "Kafka clients"). Needs `make build kafka-test-deps`.
set -e
cd "$(dirname "$0")/.."
D=target/kbench; rm -rf $D; mkdir -p $D
./target/release/ringmq serve --data-dir $D/data --listen 127.0.0.1:17470 --http 127.0.0.1:17471 --shards 2 --shard-port-base 0 --kafka 127.0.0.1:19192 --kafka-shard-port-base 0 > $D/log 2>&1 &
B=$!
sleep 2
./target/release/ringctl --broker 127.0.0.1:17470 topic create kb --partitions 4 >/dev/null
for i in 1 2 3; do
  ./target/release/ringmq-bench net --json 2>/dev/null | python3 -c 'import sys,json; d=json.load(sys.stdin); print("net", json.dumps(d.get("net", d))[:200])' || true
  target/kafka-venv/bin/python tests/kafka/producer_bench.py --bootstrap 127.0.0.1:19192 --topic kb --count 1000000 --size 1000 --acks all --idempotent
  target/kafka-venv/bin/python tests/kafka/producer_bench.py --bootstrap 127.0.0.1:19192 --topic kb --count 1000000 --size 1000 --acks 1
  ./target/release/ringmq-bench produce --broker 127.0.0.1:17470 --topic kb --partitions 4 --producers 1 --message-size 1000 --batch-size 1000 --acks fsync --messages 1000000 --json 2>/dev/null | python3 -c 'import sys,json; d=json.load(sys.stdin); print("native", d["throughput"])'
done
kill $B; wait $B || true
