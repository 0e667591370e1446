#!/usr/bin/env bash
# One step of a GPU session on the device host, after ../shared/gpu staging (see ../shared/gpu/README.md).
# Each step fits one device call (<= 10 minutes) and writes logs and JSON under $OUT:
#   tests      GPU tests (GLA ops, W8ASpike ops, the tiny model at fp32 eager and with CUDA graphs)
#   debug      benchmarks/gpu_debug_tiny.py: the tiny fp32 model under variants (TMA off, V1 runner, ...)
#   ours       benchmarks/serving.py on SpikingBrain-7B bf16: TTFT and decode 1K-1M, bench serve, cold/warm start
#   dense      the same on the dense peer (Qwen2-7B shapes), up to 128K
#   swa        the same on the sliding-window peer (window 4096 on every layer), up to 1M
#   w8aspike   W8ASpike GEMM micro-benchmark against bf16, then serving.py on SpikingBrain-7B W8ASpike
#   capacity [MODEL]  64 requests of 32K at once in an 8 GiB KV cache: the peak that run together
#   tp1, tp2   (nvidia-h200-x2) the TP=2 GPU test with tp2; TTFT at 128K and 512K, decode at 128K, TP=1 or TP=2
set -uo pipefail
step="${1:?usage: benchmarks/gpu_session.sh tests|debug|ours|dense|swa|w8aspike|capacity|tp1|tp2}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONPATH="/var/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}" VLLM_USE_FLASHINFER_SAMPLER=0
[ -f /var/tmp/gpu-site/.ready ] || { echo "no staged GPU site: stage ../shared/gpu first"; exit 3; }
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1

summary() { grep -E "^(FAILED|ERROR)|passed|failed|^\[|Error" "$1" | tail -25; }
serving() {  # model, timeout, serving.py arguments
  local model="$1" limit="$2"; shift 2
  timeout "$limit" python3 benchmarks/serving.py --model "$model" --out "$out" "$@" > "$out/run_$model.log" 2>&1
  summary "$out/run_$model.log"
}
long=(--lengths 4096 32768 131072 524288 1048576 --decode-only 1024)

case "$step" in
  tests)
    timeout 400 python3 -m pytest -q -m gpu tests -p no:cacheprovider -W ignore > "$out/gpu_tests.log" 2>&1
    summary "$out/gpu_tests.log" ;;
  debug)
    VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout 560 python3 benchmarks/gpu_debug_tiny.py "as-test" "TMA off" "V1 runner" \
      > "$out/gpu_debug_tiny.log" 2>&1; cat "$out/gpu_debug_tiny.log" | tail -80 ;;
  ours) serving spikingbrain 580 "${long[@]}" --warm-restart ;;
  dense) serving dense-peer 580 --lengths 4096 32768 131072 --decode-only 1024 ;;
  swa) serving swa-peer 580 "${long[@]}" ;;
  w8aspike)
    timeout 120 python3 benchmarks/w8aspike_gemm.py --out "$out" > "$out/w8aspike_gemm.log" 2>&1
    tail -30 "$out/w8aspike_gemm.log"
    serving spikingbrain-w8aspike 440 --lengths 4096 32768 131072 --decode-only 1024 --concurrency ;;
  capacity) serving "${2:-spikingbrain}" 580 --lengths 4096 --decode-only --concurrency \
    --kv-cache-memory-gib 8 --probe 32768 64 ;;
  tp1) serving spikingbrain 580 --lengths 131072 524288 --decode-only --concurrency ;;
  tp2)
    timeout 200 python3 -m pytest -q -m gpu tests/model/test_tensor_parallel.py -p no:cacheprovider -W ignore \
      > "$out/gpu_tp2_test.log" 2>&1; summary "$out/gpu_tp2_test.log"
    serving spikingbrain 380 --lengths 131072 524288 --decode-only --concurrency --tensor-parallel-size 2 ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
