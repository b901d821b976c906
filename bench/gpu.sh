#!/usr/bin/env bash
# The GPU tests on the tiny model (tests/test_cuda.py, tests/test_pipeline.py), then the GPU benchmarks
# in one run (issue 7), on a random-weight checkpoint the size of Z-Image-Turbo (bench/full_size.py) at
# 1024²: service vs bare pipe() overhead, back-to-back idle time, preview overhead, the per-step profile
# the service records (timed with CUDA events, worker.py `_Clock`), and the fan-out to 1, 100 and 1,000
# SSE clients (last: the longest, and the least needed).
#
#   bench/gpu.sh OUT_DIR [PYTHON]     (PYTHON defaults to .venv/bin/python; needs one CUDA GPU, ~45 GB)
#
# On a lent machine with no network, bench/device_wheels.sh (run here first) says how to install the rest.
#
# Writes OUT_DIR/gpu.log (everything printed), OUT_DIR/RESULTS-gpu.md (the benchmarks' sections) and
# OUT_DIR/report.txt (`zimage-sse report` on the jobs of the profile run).
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUT_DIR [PYTHON]}
py=${2:-.venv/bin/python}
ckpt=${ZIMAGE_SSE_FULL_SIZE_DIR:-/tmp/zimage-full-size}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu.log") 2>&1

step() { echo; echo "== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"

step "GPU tests: events in order with device timings, no wait for the GPU beyond pipe()'s, out of memory"
"$py" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_pipeline.py \
  tests/test_reliability.py::test_a_job_out_of_gpu_memory_fails_frees_its_memory_and_the_next_runs

step "build the full-size random-weight checkpoint into $ckpt"
"$py" -c "from pathlib import Path; from bench.full_size import build_full_size; build_full_size(Path('$ckpt'), 'cuda')"
du -sh "$ckpt"

step "overhead: service vs bare pipe(), 1024², 8 steps"
"$py" -m bench.overhead --device cuda --model "$ckpt" --sizes 1024 --results "$out/RESULTS-gpu.md"

step "back-to-back: 20 queued jobs at 1024²"
"$py" -m bench.back_to_back --device cuda --model "$ckpt" --size 1024 --results "$out/RESULTS-gpu.md"

step "preview overhead at 1024²"
"$py" -m bench.preview_overhead --device cuda --model "$ckpt" --size 1024 --pairs 4

step "per-step profile recorded by the service: 768², 1024², 1536x1024"
data=$(mktemp -d)
port=8765
"$py" -m zimage_sse serve --port $port --model "$ckpt" --device cuda --data-dir "$data" --log-level warning &
server=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
for size in 768x768 1024x1024 1536x1024 1024x1024 768x768 1536x1024 1024x1024; do
  "$py" -m zimage_sse generate --server "http://127.0.0.1:$port" "a lighthouse in a storm" \
    --width "${size%x*}" --height "${size#*x}" --seed 7 --out "$data/out.png" >/dev/null
done
kill -TERM $server; wait $server
"$py" -m zimage_sse report --data-dir "$data" | tee "$out/report.txt"

step "fan-out: 1, 100 and 1,000 SSE clients on a 1024² job"
"$py" -m bench.fanout --device cuda --model "$ckpt" --size 1024 --results "$out/RESULTS-gpu.md"
step "done"
