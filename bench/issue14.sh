#!/usr/bin/env bash
# Every table of issue #14 (docs/PERFORMANCE.md, "Connections, latency, workers and the peer"),
# one after the other, about 15 minutes on 2 cores; each step is bounded by `timeout`.
# Run from anywhere: bash bench/issue14.sh
# Each step prints its markdown table; all of them are collected in
# bench/results/issue14-<UTC stamp>.md (the raw results stay in each step's own directory).
# A step that fails is reported at the end; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT="bench/results/issue14-$(date -u +%Y%m%dT%H%M%SZ).md"
mkdir -p bench/results
failed=()

step() {  # name, seconds at most, command...
  local name="$1" limit="$2"
  shift 2
  printf '\n## %s\n\n    %s\n\n' "$name" "$*" | tee -a "$OUT"
  timeout --signal=TERM --kill-after=30 "$limit" "$@" 2>&1 | grep -v '^\[' | tee -a "$OUT"
  local rc="${PIPESTATUS[0]}"
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

# Targets 1 and 8: 1 KiB and 100 KiB memory hits, the default configuration, workers: 2
# (free, and bound to CPUs with server.worker_cpu_affinity), a bare twisted.web resource and
# nginx-s3-gateway's cache hit, interleaved rounds (~3.5 min).
step "Hits: default config, workers: 2, bare twisted.web, nginx-s3-gateway" 420 \
  $PY bench/cache_bench.py --targets bare,default,workers2,workers2cpu,gateway --seconds 4 --runs 3 \
  --warmup-seconds 2 --c1-seconds 0 --herd 0 --profile-seconds 0 --no-wait
# Target 1, workers: 2 once more, with bench/loadgen.c in place of wrk: the same closed loop,
# but the bodies are dropped in the kernel, so the load generator takes less of the two cores
# that it shares with the workers (~2.5 min).
step "Hits: default config, workers: 2, nginx-s3-gateway, loadgen" 360 \
  $PY bench/cache_bench.py --client loadgen --targets default,workers2,workers2cpu,gateway \
  --seconds 4 --runs 3 \
  --warmup-seconds 2 --c1-seconds 0 --herd 0 --profile-seconds 0 --no-wait
# Target 3: disk and Redis hits against memory hits, same run (~2.5 min).
step "Hits: memory, disk, redis" 300 \
  $PY bench/cache_bench.py --targets mem,disk,redis --seconds 4 --runs 3 \
  --warmup-seconds 2 --c1-seconds 0 --herd 0 --profile-seconds 0 --no-wait
# Target 2: 1 KiB MISS against a bare Twisted Agent relay (~1.5 min).
step "MISS vs bare relay" 300 \
  $PY bench/run.py --proxy require --targets relay,proxy_default --scenarios small \
  --wrk-seconds 10 --wrk-runs 3 --quiet-max-wait 10
# Target 4: 50 slow clients on the 1 GiB object, RSS and kernel socket memory (~2 min).
step "Slow streams" 300 \
  $PY bench/run.py --proxy require --targets relay --scenarios slow \
  --slow-rounds 2 --slow-seconds 20 --quiet-max-wait 10
# Target 4, the seed's form: 100 slow streams of a sparse 5 GiB object, process RSS plus
# kernel socket memory, and the full-speed cost of the stream buffers (~3 min).
step "Slow streams of 5 GiB" 420 \
  $PY bench/streams.py --variant default --clients 100 --rate 1M --seconds 20 --big-runs 3
# Target 5: 10,000 keep-alive connections (~1 min).
step "10,000 connections" 240 $PY bench/conns10k.py --conns 10000 --seconds 20
# Target 6: P50/P95/P99 at 50 % of saturation, cached and uncached (~1.5 min).
step "Latency at 50 % of saturation" 240 $PY bench/latency.py --seconds 20

echo
echo "all tables: $OUT"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
