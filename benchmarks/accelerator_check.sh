#!/usr/bin/env bash
# The accelerator check (benchmarks/accelerator_check.py): the six-model step benchmark in float32
# and bfloat16 against PyTorch, and the default CNN to its accuracy, on jax's default backend;
# one JSON in benchmarks/results/ (or --out-dir). Under 8 minutes on one GPU; --quick on a CPU.
#
#   bash benchmarks/accelerator_check.sh [--quick] [--out-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/accelerator_check.py "$@"
