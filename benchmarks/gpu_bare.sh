#!/usr/bin/env bash
# Ops-level GPU runs without staging vLLM (one device call instead of nine): the GLA prefill GPU tests,
# benchmarks/gla_prefill.py and benchmarks/spike_stats.py need only torch and triton (on the host), fla-core,
# pydantic-settings and vllm.logger.
#   here:   bash benchmarks/gpu_bare.sh pack   -> benchmarks/scratch/bare (the wheels from .gpu-stage/wheels, ~4 MB)
#   device: carry benchmarks/scratch/bare, run `bash benchmarks/gpu_bare.sh run [ops|gemv]` (results under $OUT;
#           SKIP_TESTS=1: the benchmark alone). ops: the GLA prefill; gemv: the decode GEMV's GPU tests, then
#           benchmarks/decode_gemv.py --sweep
set -uo pipefail
kit=benchmarks/scratch/bare
case "${1:?usage: benchmarks/gpu_bare.sh pack|run [ops|gemv]|ops|gemv}" in
  pack)
    rm -rf "$kit" && mkdir -p "$kit/wheels" "$kit/stub/vllm" || exit 1
    for wheel in fla_core pydantic pydantic_core pydantic_settings python_dotenv typing_inspection annotated_types; do
      cp .gpu-stage/wheels/"$wheel"-[0-9]*.whl "$kit/wheels/" || exit 1
    done
    touch "$kit/stub/vllm/__init__.py"
    printf 'import logging\n\ninit_logger = logging.getLogger  # vllm.logger stand-in for ops-level runs\n' \
      > "$kit/stub/vllm/logger.py"
    du -sh "$kit" ;;
  run)  # the kit's packages beside the host's torch and triton, then the ops step
    site=/var/tmp/bare-site
    [ -d "$site/fla" ] || python3 -m pip install -q --no-deps --no-index --target "$site" "$kit"/wheels/*.whl
    cp -r "$kit/stub/vllm" "$site/"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    PYTHONPATH="$PWD:$site" bash "$0" "${2:-ops}" ;;
  ops)  # in the Python environment given (also gpu_session.sh gla-prefill's, with vLLM staged)
    out="${OUT:-/tmp/out}"
    mkdir -p "$out"
    [ -n "${SKIP_TESTS:-}" ] || { timeout 200 python3 -m pytest -q -m gpu tests/ops/test_gla.py -p no:cacheprovider \
      -k "varlen_on_cuda or prefill_setting" -W ignore > "$out/gpu_gla_tests.log" 2>&1; tail -3 "$out/gpu_gla_tests.log"; }
    timeout 300 python3 benchmarks/gla_prefill.py --sweep --out "$out" > "$out/gla_prefill.log" 2>&1
    tail -40 "$out/gla_prefill.log"
    timeout 60 python3 benchmarks/spike_stats.py --out "$out" 2>&1 | tee "$out/spike_stats.log" ;;
  gemv)
    out="${OUT:-/tmp/out}"
    mkdir -p "$out"
    [ -n "${SKIP_TESTS:-}" ] || { timeout 200 python3 -m pytest -q -m gpu tests/ops/test_gemv.py -p no:cacheprovider \
      -W ignore > "$out/gpu_gemv_tests.log" 2>&1; tail -3 "$out/gpu_gemv_tests.log"; }
    timeout 200 python3 benchmarks/decode_gemv.py --sweep --out "$out" 2>&1 | tee "$out/decode_gemv.log" ;;
  *) echo "unknown step $1"; exit 2 ;;
esac
