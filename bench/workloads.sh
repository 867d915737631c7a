#!/usr/bin/env bash
# The standard ringmq workloads W1-W5 (see BENCHMARKS.md), each run RUNS
# times (default 3). Every run also takes the hardware baselines of the same
# machine (`ringmq-bench disk --json`, `ringmq-bench net --json`), so each
# workload is read against the disk and the network measured minutes apart,
# not against numbers from another day.
#
#   bash bench/workloads.sh            # all workloads, 3 runs (~8 min)
#   RUNS=1 bash bench/workloads.sh     # a quick look
#   ONLY="W1 W2" bash bench/workloads.sh
#   bash bench/workloads.sh profile    # perf record of W1 fsync, W2 fsync, W5 cold
#
# Needs the release binaries (`cargo build --release --workspace --bins`;
# the script never builds, so nothing is compiled while it measures), jq,
# python3 and curl. Brokers are started and stopped here, on ports 4xxxx
# (PORT_BASE, default 47070: native PORT_BASE, HTTP PORT_BASE+1,
# shard-aware ports ephemeral), with their data under target/workloads/.
# Raw results: one JSON object per line in target/workloads/<W>.jsonl (the
# ringmq-bench report plus "workload", "run", "cpu" = CPU seconds of the
# client and the broker during that command). The summary is printed as
# markdown and written to target/workloads/summary.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
ONLY=${ONLY:-"W1 W2 W3 W4 W5"}
PORT_BASE=${PORT_BASE:-47070}
OUT=${OUT:-$ROOT/target/workloads}
BIN=$ROOT/target/release
BENCH=$BIN/ringmq-bench
BROKER_BIN=$BIN/ringmq
BROKER=127.0.0.1:$PORT_BASE
HTTP=127.0.0.1:$((PORT_BASE + 1))
DATA=$OUT/data
MSGS=${MSGS:-2000000}          # W1, W2, W3, W5 cold
TAIL_MSGS=${TAIL_MSGS:-50000}  # W5 tail cache: 50 MB < the 64 MiB tail cache
W4_RATE=${W4_RATE:-50000}
W4_DURATION=${W4_DURATION:-60}
W4_WARMUP=${W4_WARMUP:-5}
W4_LINGER=${W4_LINGER:-1}      # see BENCHMARKS.md, W4
NET_S=${NET_S:-3}

for tool in jq python3 curl; do
    command -v "$tool" >/dev/null || { echo "workloads.sh: needs $tool" >&2; exit 1; }
done
for b in "$BENCH" "$BROKER_BIN"; do
    [[ -x $b ]] || { echo "workloads.sh: $b missing: cargo build --release --workspace --bins" >&2; exit 1; }
done

mkdir -p "$OUT"
BROKER_PID=
cleanup() {
    if [[ -n ${BROKER_PID:-} ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date +%T)] $*" >&2; }

# CPU seconds (user+system) a process has used so far.
proc_cpu() {
    local pid=$1 tck
    tck=$(getconf CLK_TCK)
    if [[ -r /proc/$pid/stat ]]; then
        # Fields after the ")" of comm: utime is the 12th, stime the 13th.
        awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / t }' "/proc/$pid/stat"
    else
        echo 0
    fi
}

# start_broker SHARDS: a fresh broker on the data dir; waits for /health.
start_broker() {
    local shards=$1
    mkdir -p "$DATA"
    "$BROKER_BIN" serve --data-dir "$DATA" --listen "$BROKER" --http "$HTTP" --kafka off \
        --shard-port-base 0 --shards "$shards" >>"$OUT/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 200); do
        if curl -sf "http://$HTTP/health" 2>/dev/null | grep -q '"status":"ok"'; then
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || { echo "broker died, see $OUT/broker.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "broker not healthy after 10 s, see $OUT/broker.log" >&2
    exit 1
}

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
}

# Drops the page cache; returns 1 (and says so once) where that is refused.
DROP_NOTE=
drop_caches() {
    sync
    if (echo 1 >/proc/sys/vm/drop_caches) 2>/dev/null; then
        DROP_NOTE=dropped
        return 0
    fi
    [[ -n $DROP_NOTE ]] || log "cannot drop the page cache (/proc/sys/vm/drop_caches refused); the log is O_DIRECT anyway"
    DROP_NOTE=refused
    return 1
}

# bench WORKLOAD RUN ringmq-bench-args...: runs one ringmq-bench command,
# appends its JSON report (+ workload, run, CPU split) to $OUT/WORKLOAD.jsonl.
bench() {
    local workload=$1 run=$2
    shift 2
    local b0=0 b1=0 t0 t1 json rc=0 tf
    tf=$(mktemp)
    if [[ -n $BROKER_PID ]]; then b0=$(proc_cpu "$BROKER_PID"); fi
    t0=$(date +%s.%N)
    log "$workload run $run: ringmq-bench $*"
    json=$(/usr/bin/time -f '%U %S' -o "$tf" "$BENCH" "$@" --json) || rc=$?
    t1=$(date +%s.%N)
    if [[ -n $BROKER_PID ]]; then b1=$(proc_cpu "$BROKER_PID"); fi
    if [[ $rc -ne 0 || -z $json ]]; then
        echo "workloads.sh: $workload run $run failed (rc $rc): ringmq-bench $*" >&2
        rm -f "$tf"
        exit 1
    fi
    local client_cpu
    client_cpu=$(awk 'END { printf "%.3f", $1 + $2 }' "$tf")
    rm -f "$tf"
    jq -c --arg w "$workload" --argjson r "$run" --arg note "${NOTE:-}" \
        --argjson cc "$client_cpu" --argjson bc "$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.3f", b - a }')" \
        --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        '. + {workload: $w, run: $r, note: $note,
              cpu: {client_s: $cc, broker_s: $bc, wall_s: $wall}}' \
        <<<"$json" >>"$OUT/$workload.jsonl"
}

want() { [[ " $ONLY " == *" $1 "* ]]; }

P=(--broker "$BROKER" --message-size 1000)

run_all() {
    rm -f "$OUT"/*.jsonl "$OUT/broker.log"
    for run in $(seq 1 "$RUNS"); do
        log "=== run $run of $RUNS ==="
        rm -rf "$DATA"
        # Baselines first, with no broker running.
        bench disk "$run" disk --dir "$ROOT/target/bench-disk"
        bench net "$run" net --duration-s "$NET_S"

        start_broker 2
        if want W1; then
            bench W1-fsync "$run" produce "${P[@]}" --topic w1 --recreate-topic --partitions 1 \
                --batch-size 1000 --acks fsync --messages "$MSGS"
            bench W1-leader "$run" produce "${P[@]}" --topic w1 --recreate-topic --partitions 1 \
                --batch-size 1000 --acks leader --messages "$MSGS"
        fi
        if want W2; then
            bench W2-fsync "$run" produce "${P[@]}" --topic w2 --recreate-topic --partitions 1 \
                --batch-size 100 --acks fsync --messages "$MSGS"
            bench W2-leader "$run" produce "${P[@]}" --topic w2 --recreate-topic --partitions 1 \
                --batch-size 100 --acks leader --messages "$MSGS"
        fi
        if want W4; then
            bench W4 "$run" e2e "${P[@]}" --topic w4 --recreate-topic --partitions 1 \
                --batch-size 1000 --linger-ms "$W4_LINGER" --acks fsync \
                --rate "$W4_RATE" --duration-s "$W4_DURATION" --warmup-s "$W4_WARMUP"
        fi
        if want W5; then
            # Tail cache: the broker has just appended these, 50 MB < 64 MiB.
            bench W5-fill-tail "$run" produce "${P[@]}" --topic w5t --recreate-topic --partitions 1 \
                --batch-size 1000 --acks fsync --messages "$TAIL_MSGS"
            bench W5-tail "$run" consume "${P[@]}" --topic w5t --partitions 1 --messages "$TAIL_MSGS"
            # Cold: 2 GB on disk, broker restarted (empty tail cache), page
            # cache dropped.
            bench W5-fill-cold "$run" produce "${P[@]}" --topic w5 --recreate-topic --partitions 1 \
                --batch-size 1000 --acks fsync --messages "$MSGS"
            stop_broker
            drop_caches || true
            start_broker 2
            NOTE="page cache $DROP_NOTE" bench W5-cold "$run" consume "${P[@]}" --topic w5 \
                --partitions 1 --messages "$MSGS"
        fi
        stop_broker
        if want W3; then
            for shards in 1 2; do
                rm -rf "$DATA"
                start_broker "$shards"
                bench "W3-shards$shards" "$run" e2e "${P[@]}" --topic w3 --recreate-topic \
                    --partitions 8 --producers 2 --consumers 2 --batch-size 1000 --acks fsync \
                    --messages "$MSGS"
                stop_broker
            done
        fi
        rm -rf "$DATA"
    done
    summarise
}

summarise() {
    python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys

out = sys.argv[1]

def load(w):
    p = os.path.join(out, w + ".jsonl")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return sorted((json.loads(l) for l in f if l.strip()), key=lambda r: r["run"])

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"

disk, net = load("disk"), load("net")
by_run = lambda rows, key: {r["run"]: key(r) for r in rows}
fsync_bw = by_run(disk, lambda r: r["disk"]["write_fsync_1mib_mb_per_sec"])
read_bw = by_run(disk, lambda r: r["disk"]["read_mb_per_sec"])
net_bw = by_run(net, lambda r: r["net"]["mb_per_sec"])
mbps = lambda r: r["throughput"]["mb_per_sec"]

rows_summary = []

def verdict(ratio, target, le=False):
    if ratio is None:
        return "–"
    return "met" if (ratio <= target if le else ratio >= target) else "**not met**"

def vs_baseline(short, title, w, base, base_name, target):
    rows = load(w)
    if not rows:
        return
    print(f"\n### {title}\n")
    print(f"| run | MB/s | msg/s | {base_name} MB/s (same run) | ratio | client CPU s | broker CPU s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b = base.get(r["run"])
        ratio = mbps(r) / b if b else None
        c = r["cpu"]
        print(f"| {r['run']} | {f(mbps(r))} | {f(r['throughput']['msgs_per_sec'])} | {f(b)} | "
              f"{f(ratio, 2)} | {f(c['client_s'], 2)} | {f(c['broker_s'], 2)} | {f(c['wall_s'], 1)} |")
    m = med(mbps(r) for r in rows)
    mb = med(base.get(r["run"]) for r in rows)
    ratio = m / mb if m is not None and mb else None
    print(f"| **median** | **{f(m)}** | {f(med(r['throughput']['msgs_per_sec'] for r in rows))} | "
          f"**{f(mb)}** | **{f(ratio, 2)}** | | | |")
    v = verdict(ratio, target)
    print(f"\nTarget ≥ {target}× {base_name}: ratio of medians {f(ratio, 2)} → {v}.")
    rows_summary.append((short, f"{f(m)} MB/s", f"{base_name} {f(mb)} MB/s", f"{f(ratio, 2)}×",
                         f"≥ {target}×", v))
    return m

print("## Baselines (each run, taken just before its workloads)\n")
print("| run | disk write MB/s | disk read MB/s | 1 MiB write+fdatasync MB/s | 4 MiB write+fdatasync MB/s | fdatasync p50/p99 µs | net MB/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in disk:
    d = r["disk"]
    lat = d["fdatasync_latency_us"]
    print(f"| {r['run']} | {f(d['write_mb_per_sec'])} | {f(d['read_mb_per_sec'])} | "
          f"{f(d['write_fsync_1mib_mb_per_sec'])} | {f(d['write_fsync_4mib_mb_per_sec'])} | "
          f"{lat['p50']}/{lat['p99']} | {f(net_bw.get(r['run']))} |")
if disk:
    print(f"| **median** | {f(med(r['disk']['write_mb_per_sec'] for r in disk))} | "
          f"{f(med(read_bw.values()))} | {f(med(fsync_bw.values()))} | "
          f"{f(med(r['disk']['write_fsync_4mib_mb_per_sec'] for r in disk))} | | {f(med(net_bw.values()))} |")

w1f = vs_baseline("W1 fsync", "W1 fsync: 1 producer, 1 partition, 1000 B, batch 1000, acks fsync",
                  "W1-fsync", fsync_bw, "disk 1 MiB write+fdatasync", 2.0)
w1l = vs_baseline("W1 leader", "W1 leader: as W1, acks leader", "W1-leader", net_bw, "net", 0.45)

for acks, w1m in (("fsync", w1f), ("leader", w1l)):
    rows = load(f"W2-{acks}")
    if not rows:
        continue
    w1rows = {r["run"]: mbps(r) for r in load(f"W1-{acks}")}
    print(f"\n### W2 {acks}: as W1 {acks} with batch 100\n")
    print(f"| run | MB/s | msg/s | W1 {acks} MB/s (same run) | ratio | client CPU s | broker CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b = w1rows.get(r["run"])
        print(f"| {r['run']} | {f(mbps(r))} | {f(r['throughput']['msgs_per_sec'])} | {f(b)} | "
              f"{f(mbps(r) / b if b else None, 2)} | {f(r['cpu']['client_s'], 2)} | {f(r['cpu']['broker_s'], 2)} |")
    m = med(mbps(r) for r in rows)
    ratio = m / w1m if m is not None and w1m else None
    print(f"| **median** | **{f(m)}** | | **{f(w1m)}** | **{f(ratio, 2)}** | | |")
    v = verdict(ratio, 0.6)
    print(f"\nTarget ≥ 0.6× W1 {acks}: {f(ratio, 2)} → {v}.")
    rows_summary.append((f"W2 {acks}", f"{f(m)} MB/s", f"W1 {acks} {f(w1m)} MB/s", f"{f(ratio, 2)}×", "≥ 0.6×", v))

s1, s2 = load("W3-shards1"), load("W3-shards2")
if s1 or s2:
    print("\n### W3: e2e, 2 producers + 2 consumers, 8 partitions, batch 1000, acks fsync\n")
    print("Throughput is what the consumers received (send → receipt), MB/s of values.\n")
    print("| run | shards 1 MB/s | shards 2 MB/s | ratio 2/1 | e2e p50 ms (1 / 2) | client CPU s (1 / 2) | broker CPU s (1 / 2) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    a, b = {r["run"]: r for r in s1}, {r["run"]: r for r in s2}
    for run in sorted(set(a) | set(b)):
        x, y = a.get(run), b.get(run)
        mx, my = (mbps(x) if x else None), (mbps(y) if y else None)
        p = lambda r: f((r["latency_us"]["p50"] or 0) / 1000, 1) if r else "–"
        c = lambda r, k: f(r["cpu"][k], 2) if r else "–"
        print(f"| {run} | {f(mx)} | {f(my)} | {f(my / mx if mx and my else None, 2)} | "
              f"{p(x)} / {p(y)} | {c(x, 'client_s')} / {c(y, 'client_s')} | {c(x, 'broker_s')} / {c(y, 'broker_s')} |")
    m1, m2 = med(mbps(r) for r in s1), med(mbps(r) for r in s2)
    ratio = m2 / m1 if m1 and m2 else None
    print(f"| **median** | **{f(m1)}** | **{f(m2)}** | **{f(ratio, 2)}** | | | |")
    v = verdict(ratio, 1.3)
    print(f"\nTarget shards2 ≥ 1.3× shards1: {f(ratio, 2)} → {v}.")
    rows_summary.append(("W3 shards2/shards1", f"{f(m2)} vs {f(m1)} MB/s", "–", f"{f(ratio, 2)}×", "≥ 1.3×", v))

rows = load("W4")
if rows:
    print("\n### W4: e2e at a fixed rate, acks fsync (latency send → receipt, from the intended send time)\n")
    print("| run | achieved msg/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | produce-ack p99 µs | client CPU s | broker CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    L = lambda r, k: r["latency_us"][k]
    for r in rows:
        print(f"| {r['run']} | {f(r['throughput']['msgs_per_sec'])} | {L(r,'p50')} | {L(r,'p90')} | {L(r,'p99')} | "
              f"{L(r,'p999')} | {L(r,'max')} | {r['produce_latency_us']['p99']} | "
              f"{f(r['cpu']['client_s'], 1)} | {f(r['cpu']['broker_s'], 1)} |")
    mp = {k: med(L(r, k) for r in rows) for k in ("p50", "p90", "p99", "p999", "max")}
    print(f"| **median** | {f(med(r['throughput']['msgs_per_sec'] for r in rows))} | **{f(mp['p50'])}** | {f(mp['p90'])} | "
          f"**{f(mp['p99'])}** | **{f(mp['p999'])}** | **{f(mp['max'])}** | "
          f"{f(med(r['produce_latency_us']['p99'] for r in rows))} | | |")
    v99 = verdict(mp["p99"] / 1000 if mp["p99"] is not None else None, 5, le=True)
    v999 = verdict(mp["p999"] / 1000 if mp["p999"] is not None else None, 10, le=True)
    print(f"\nTargets p99 ≤ 5 ms: {f(mp['p99'] / 1000, 2)} ms → {v99}; p99.9 ≤ 10 ms: {f(mp['p999'] / 1000, 2)} ms → {v999}.")
    rows_summary.append(("W4 p99", f"{f(mp['p99'] / 1000, 2)} ms", "–", "–", "≤ 5 ms", v99))
    rows_summary.append(("W4 p99.9", f"{f(mp['p999'] / 1000, 2)} ms", "–", "–", "≤ 10 ms", v999))
    rows_summary.append(("W4 p50 / max", f"{f(mp['p50'] / 1000, 2)} / {f(mp['max'] / 1000, 1)} ms", "–", "–", "–", "–"))

vs_baseline("W5 cold", "W5 cold: consume 2,000,000 from disk after a broker restart (empty tail cache)",
            "W5-cold", read_bw, "disk read", 0.5)
cold = load("W5-cold")
if cold and cold[0].get("note"):
    print(f"\n({cold[0]['note']} before each cold run.)")
vs_baseline("W5 tail cache", "W5 tail cache: consume 50,000 just produced (broker still running)",
            "W5-tail", net_bw, "net", 0.45)

print("\n## Summary (medians of the runs; ratios are median workload / median baseline of the same runs)\n")
print("| workload | median | baseline median | ratio | target | met? |")
print("|---|---:|---:|---:|---:|---|")
for row in rows_summary:
    print("| " + " | ".join(row) + " |")
PY
}

# --- profile mode -----------------------------------------------------------
# perf record -g of the broker and of the bench client (separate files), for
# W1 fsync, W2 fsync and W5 cold; then the top symbols per thread name.
profile() {
    command -v perf >/dev/null || { echo "workloads.sh: perf not installed" >&2; exit 1; }
    local P_OUT=$OUT/profile
    rm -rf "$P_OUT" "$DATA"
    mkdir -p "$P_OUT"
    prof() { # name, ringmq-bench args...
        local name=$1
        shift
        local bpid
        perf record -F 999 -g -o "$P_OUT/$name.broker.data" -p "$BROKER_PID" 2>>"$P_OUT/perf.log" &
        bpid=$!
        sleep 0.5
        perf stat -e task-clock,context-switches,cpu-migrations,page-faults \
            -o "$P_OUT/$name.client.stat" \
            perf record -F 999 -g -o "$P_OUT/$name.client.data" \
            "$BENCH" "$@" >"$P_OUT/$name.client.json" 2>>"$P_OUT/perf.log"
        kill -INT "$bpid"
        wait "$bpid" 2>/dev/null || true
        for who in broker client; do
            perf report -i "$P_OUT/$name.$who.data" --no-children --sort comm,sym \
                --stdio -g none --percent-limit 0.7 2>/dev/null >"$P_OUT/$name.$who.txt" || true
            perf report -i "$P_OUT/$name.$who.data" --no-children --sort comm \
                --stdio -g none 2>/dev/null >"$P_OUT/$name.$who.threads.txt" || true
        done
        log "profile $name: $P_OUT/$name.{broker,client}.txt"
    }
    start_broker 2
    prof W1-fsync produce "${P[@]}" --topic w1 --recreate-topic --batch-size 1000 --acks fsync --messages "$MSGS" --json
    prof W2-fsync produce "${P[@]}" --topic w2 --recreate-topic --batch-size 100 --acks fsync --messages "$MSGS" --json
    "$BENCH" produce "${P[@]}" --topic w5 --recreate-topic --batch-size 1000 --acks fsync --messages "$MSGS" --json >/dev/null
    stop_broker
    drop_caches || true
    start_broker 2
    prof W5-cold consume "${P[@]}" --topic w5 --messages "$MSGS" --json
    stop_broker
    rm -rf "$DATA"
}

case "${1:-run}" in
    run) run_all ;;
    summary) summarise ;;
    profile) profile ;;
    *) echo "usage: bash bench/workloads.sh [run|summary|profile]" >&2; exit 2 ;;
esac
