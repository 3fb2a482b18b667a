#!/usr/bin/env bash
# The GPU check with this machine's Python, from a source checkout (nnship need not be installed:
# nnship/__init__.py finds its stage folders beside it). Writes gpu-check.json and gpu-check.md
# under the folder given, or $OUT, or reports/gpu.
#
#   deploy/gpu/run-gpu-check.sh [OUT_DIR]
#
# onnxruntime-gpu must be importable first (installed, or put on PYTHONPATH). The whole run is
# bounded: the check ends each of its parts on a deadline, and this script ends it after 9 minutes.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-reports/gpu}}
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
exec timeout -k 10 540 "${PYTHON:-python3}" -m nnship.loadtests.gpucheck "$out"
