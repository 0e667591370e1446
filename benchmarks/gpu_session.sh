#!/usr/bin/env bash
# One step of a GPU session on the device host, after ../shared/gpu staging (see ../shared/gpu/README.md).
# Each step fits one device call (<= 10 minutes) and writes logs and JSON under $OUT:
#   tests      GPU tests (GLA ops, W8ASpike ops, the tiny model at fp32, eager and CUDA graphs)
#   bisect     the tiny-model GPU test again with CUDA_LAUNCH_BLOCKING=1, and with the V1 model runner
#   ours       TTFT and batch-1 decode of the 7B architecture (4K, 32K, 128K)
#   dense      the same for the dense peer (Qwen2-7B shapes)
#   swa        the same for the sliding-window peer (window 4096 on every layer)
set -uo pipefail
step="${1:?usage: benchmarks/gpu_session.sh tests|bisect|ours|dense|swa}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONPATH="/var/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}" VLLM_USE_FLASHINFER_SAMPLER=0
[ -f /var/tmp/gpu-site/.ready ] || { echo "no staged GPU site: stage ../shared/gpu first"; exit 3; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1

summary() { grep -E "^(FAILED|ERROR)|passed|failed|^\[" "$1" | tail -20; }
latency() { timeout 560 python3 benchmarks/gpu_latency.py --model "$1" --lengths 4096 32768 131072 --out "$out" \
  > "$out/latency_$1.log" 2>&1; summary "$out/latency_$1.log"; }

case "$step" in
  tests)
    timeout 560 python3 -m pytest -q -m gpu tests -p no:cacheprovider -W ignore > "$out/gpu_tests.log" 2>&1
    summary "$out/gpu_tests.log" ;;
  bisect)
    CUDA_LAUNCH_BLOCKING=1 timeout 270 python3 -m pytest -q -x tests/gpu -p no:cacheprovider -W ignore \
      > "$out/gpu_blocking.log" 2>&1; summary "$out/gpu_blocking.log"
    VLLM_USE_V2_MODEL_RUNNER=0 timeout 270 python3 -m pytest -q -x tests/gpu -p no:cacheprovider -W ignore \
      > "$out/gpu_v1_runner.log" 2>&1; summary "$out/gpu_v1_runner.log" ;;
  ours) latency spikingbrain ;;
  dense) latency dense-peer ;;
  swa) latency swa-peer ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
