#!/usr/bin/env bash
# Baselines only (no proxy): nginx direct, bare twisted.web resource, bare Twisted relay hop.
# Run from the repository root: bash bench/run_baseline.sh [extra bench/run.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --proxy skip --targets nginx,bare,relay "$@"
