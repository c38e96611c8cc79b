#!/usr/bin/env bash
# Full benchmark table: nginx, bare twisted.web, bare relay (+ knob variants) and the proxy.
# Run from the repository root: bash bench/run_all.sh [extra bench/run.py options]
# Takes ~15 minutes on 2 cores; raw results under bench/results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --proxy require \
  --targets nginx,bare,relay,relay_epcache,relay_pool2,relay_accesslog,bare_accesslog,relay_buf16k,relay_pause16k,relay_sndbuf256k \
  "$@"
