#!/usr/bin/env bash
# One step of a GPU session on the device host, after ../shared/gpu staging (see ../shared/gpu/README.md).
# Each step fits one device call (<= 10 minutes) and writes logs and JSON under $OUT:
#   tune       benchmarks/tune_fla.py: fla's GLA kernels autotuned vs pinned; later steps pin the winners
#   tests      GPU tests (GLA ops, W8ASpike ops, the tiny model at fp32 eager and with CUDA graphs)
#   debug      benchmarks/gpu_debug_tiny.py: the tiny fp32 model under variants (GLA ops alone, as the test, V1 runner)
#   ours       benchmarks/serving.py on SpikingBrain-7B bf16: cold start, TTFT and decode 1K-1M
#   ours-bench the same engine again (warm start twice), vllm bench serve at concurrency 1-256
#   dense      the same on the dense peer (Qwen2-7B shapes), up to 128K
#   swa        the same on the sliding-window peer (window 4096 on every layer), up to 1M
#   w8aspike   W8ASpike linears at M 1, 64, 4096 with the previous code (benchmarks/scratch/before, if carried) and
#              at M = 1 with the default plans; a GEMV sweep at M = 1 on every 7B shape, whose winners go into the
#              plan table that later steps use (/var/tmp/w8aspike_plans.json); then every shape against bf16 at
#              M 1 to 4096 with it
#   w8aspike-prefill-sweep  every 7B shape at M 64 and 4096 with the previous code (benchmarks/scratch/before, if
#              carried) and with this one, then the int8-dot plans (dense first ELL pieces too) at M = 4096 on qkv_proj
#              and gate_up_proj, winners into the same table
#   w8aspike-tests  the W8ASpike GPU tests alone (four processes at once: Triton compiling dominates)
#   w8aspike-dense-check  the dense-plane prefill path: the GPU tests that run it (150 s), every shape against bf16
#              at M 64 and 4096, then the dense tiles at M = 4096 on qkv_proj and gate_up_proj (each checked against
#              the naive GEMM; winners into the table that later steps use, e.g. w8aspike-serve)
#   w8aspike-serve  serving.py on SpikingBrain-7B W8ASpike (TTFT and decode at 4K to 128K)
#   bf16-serve the same on SpikingBrain-7B bf16: w8aspike-serve's baseline, run in the same session
#   w8aspike-down-serve  W8ASpike with the opt-in spiked down_proj: decode at 1K and 128K, TTFT at 4K
#   capacity [MODEL [N [LENGTH]]]  N (default 64) requests of LENGTH (default 32768) tokens at once in an 8 GiB KV
#              cache: the peak that run together (serving.py's probe: long outputs, stops at a plateau)
#              (ours holds a window and one GLA state per request at any length, so its 32K count should hold at 128K;
#              at 128K every admitted prompt is prefilled first, ~3.5 s each: PROBE_LIMIT=330 capacity spikingbrain 80 131072)
#   capacity-both [LENGTH [OURS [DENSE]]]  capacity of ours (OURS requests, default 128) and of the dense peer (DENSE,
#              default 16) at once on one GPU, 45% each (counts, not timings: the two engines share the GPU);
#              at 128K: PROBE_LIMIT=330 capacity-both 131072 64 2
#   profile [MODEL [LENGTH]]  where one prefill's GPU time goes (default spikingbrain, 32768 tokens): kernels by
#              total time under the torch profiler (benchmarks/gpu_latency.py --profile, engine in-process)
#   gla-prefill  the GLA prefill GPU tests, then benchmarks/gla_prefill.py: our GQA-aware Triton kernels against fla's
#              chunk_gla on the 7B layer shape (outputs compared first), then the triton_chunk.Tiles sweep; then the
#              tiny model through the default prefill path (ours) with CUDA graphs against the reference
#   ttft-gla   TTFT at 32K and 128K and a profile of one 32K prefill with each GLA prefill path (NEURONCHIP_GLA_PREFILL
#              fla, then triton), in-process engines one after the other (benchmarks/gpu_latency.py, JSON per path)
#   ttft-peers TTFT at 32K and 128K of the sliding-window and the dense peer (ttft-gla's baselines, same session)
#   decode-profile  where a batch-1 decode step goes after a 32K prompt: ours, ours with the previous code
#              (benchmarks/scratch/before, if carried) and the sliding-window peer; GPU kernels and GPU against wall
#              time per token (benchmarks/gpu_latency.py --profile-decode, engines in-process);
#              DECODE_MODELS=spikingbrain leaves the peer out
#   gemv       benchmarks/decode_gemv.py: our one-token GEMV against cuBLAS on the 7B's projection shapes (SWEEP=1: --sweep)
#   gemv-check the decode GEMV in the model, one call: the GPU tests that run it (the tiny model with CUDA graphs at
#              fp32 and bf16, the op on the 7B shapes), then batch-1 decode and a decode profile after 32K with
#              NEURONCHIP_DECODE_GEMV=1 and =0 (in-process engines, one after the other)
#   w8aspike-ratio  W8ASpike against bf16 under the current defaults (decode GEMV on), one call: TTFT at 1K and 4K and
#              batch-1 decode after each, in-process engines one after the other (W8ASpike first: its cold compile
#              is the longer)
#   engine-start  benchmarks/engine_start.py: cold and warm `vllm serve` starts of the tiny checkpoint (caches emptied
#              for each cold one), alternating with the previous code (benchmarks/scratch/before, if carried)
#   pair A B   (two GPUs) steps A and B at once, A on GPU 0 and B on GPU 1 (quote a step with arguments)
#   tp2-test   (nvidia-h200-x2) the tiny checkpoint at TP=2 on two GPUs against the reference
#   tp2-tiny   (nvidia-h200-x2) vllm serve of a tiny checkpoint at TP=2 through the OpenAI API
#   tp1, tp2   TTFT at 128K and 512K, decode after each, TP=1 (run with CUDA_VISIBLE_DEVICES=0) or TP=2
set -uo pipefail
step="${1:?usage: benchmarks/gpu_session.sh tune|tests|debug|ours|ours-bench|dense|swa|w8aspike|w8aspike-prefill-sweep|w8aspike-tests|w8aspike-serve|w8aspike-down-serve|bf16-serve|capacity|capacity-both|profile|gla-prefill|ttft-gla|ttft-peers|decode-profile|gemv|gemv-check|w8aspike-ratio|engine-start|tp1|tp2-test|tp2-tiny|tp2|pair A B}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONPATH="/var/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}" VLLM_USE_FLASHINFER_SAMPLER=0
[ -f /var/tmp/gpu-site/.ready ] || { echo "no staged GPU site: stage ../shared/gpu first"; exit 3; }
[ -n "${INSTALLED:-}" ] || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
tuned=/var/tmp/fla_configs.json  # written by the tune step on this host: pinned by every later step
[ -f "$tuned" ] && export NEURONCHIP_FLA_CONFIGS="$tuned"
plans=/var/tmp/w8aspike_plans.json  # written by the w8aspike step's sweep on this host: used by every later step
[ -f "$plans" ] && export NEURONCHIP_W8ASPIKE_PLANS="$plans"

summary() { grep -E "^(FAILED|ERROR)|passed|failed|^\[|Error" "$1" | tail -25; }
serving() {  # model, timeout, serving.py arguments
  local model="$1" limit="$2"; shift 2
  timeout "$limit" python3 benchmarks/serving.py --model "$model" --out "$out" --port "${PORT:-8021}" "$@" \
    > "$out/run_$model.log" 2>&1
  summary "$out/run_$model.log"
}
latency() {  # model, timeout, log name, lines shown, gpu_latency.py arguments (in-process engine)
  local model="$1" limit="$2" log="$out/$3.log" lines="$4"; shift 4
  timeout "$limit" python3 benchmarks/gpu_latency.py --model "$model" "$@" > "$log" 2>&1
  grep -E "^\[$model\]" "$log" | tail -"$lines"
}
long=(--lengths 4096 32768 131072 524288 1048576 --decode-only 1024)
previous_code() {  # limit, log, benchmark script and arguments: the previous commit's code, if carried as a worktree
  local limit="$1" log="$2"; shift 2
  [ -d benchmarks/scratch/before ] || return 0
  (cd benchmarks/scratch/before && PYTHONPATH="$PWD:$PYTHONPATH" timeout "$limit" python3 "$@") > "$log" 2>&1
}
sweep_into_table() {  # limit, log, w8aspike_gemm.py --sweep arguments: winners merged into the table later steps use
  local limit="$1" log="$2"; shift 2
  [ -f "$plans" ] && cp "$plans" "$out/w8aspike_plans.json"
  timeout "$limit" python3 benchmarks/w8aspike_gemm.py --sweep --verbose --out "$out" "$@" > "$log" 2>&1 \
    && cp "$out/w8aspike_plans.json" "$plans"
}
w8aspike_tests() {  # limit, -k expressions: the W8ASpike GPU tests, one process per expression at once
  local limit="$1"; shift
  local parts=("$@") i
  for i in "${!parts[@]}"; do
    timeout "$limit" python3 -m pytest -q -m gpu tests/ops/test_w8aspike_ops.py -k "${parts[$i]}" -p no:cacheprovider \
      -W ignore > "$out/gpu_w8aspike_tests_$i.log" 2>&1 &
  done
  wait; for i in "${!parts[@]}"; do summary "$out/gpu_w8aspike_tests_$i.log"; done
}

case "$step" in
  pair)  # pair STEP0 STEP1: the two steps at once, one per GPU of a two-GPU host (serving on ports 8021, 8022)
    # shellcheck disable=SC2086  # a step with arguments is one quoted word: "capacity dense-peer 16"
    INSTALLED=1 CUDA_VISIBLE_DEVICES=0 bash "$0" ${2:?pair STEP0 STEP1} & first=$!
    INSTALLED=1 CUDA_VISIBLE_DEVICES=1 PORT=8022 bash "$0" ${3:?pair STEP0 STEP1}
    wait "$first" ;;
  tests)  # model and ops at once; every sweep candidate is checked by the w8aspike step's --sweep instead
    timeout 560 python3 -m pytest -q -m gpu tests/gpu tests/model -p no:cacheprovider -W ignore \
      > "$out/gpu_model_tests.log" 2>&1 &  # tiny engines one after the other, ~100 s each with CUDA graphs
    timeout 400 python3 -m pytest -q -m gpu tests/ops -k "not every_candidate" -p no:cacheprovider -W ignore \
      > "$out/gpu_ops_tests.log" 2>&1
    wait; summary "$out/gpu_model_tests.log"; summary "$out/gpu_ops_tests.log" ;;
  tune)
    timeout 300 python3 benchmarks/tune_fla.py --out "$out" > "$out/tune_fla.log" 2>&1 && cp "$out/fla_configs.json" "$tuned"
    tail -30 "$out/tune_fla.log" ;;
  debug)  # LIMIT: seconds for all variants
    VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout "${LIMIT:-560}" python3 benchmarks/gpu_debug_tiny.py "ops alone" "as-test" "V1 runner" \
      > "$out/gpu_debug_tiny.log" 2>&1; tail -80 "$out/gpu_debug_tiny.log" ;;
  ours) serving spikingbrain 580 "${long[@]}" --concurrency ;;  # a cold start of ours alone takes ~5 min
  ours-bench) serving spikingbrain 580 --lengths 1024 --decode-only --warm-restart ;;
  dense) serving dense-peer 580 --lengths 4096 32768 131072 --decode-only 1024 ;;
  swa) serving swa-peer 580 "${long[@]}" ;;
  w8aspike)  # M = 1 before / default / swept; then every 7B shape against bf16 at decode and prefill sizes
    previous_code 120 "$out/w8aspike_before.log" benchmarks/w8aspike_gemm.py --m 1 64 4096 --out "$out/before"
    NEURONCHIP_W8ASPIKE_PLANS=/no-table timeout 60 python3 benchmarks/w8aspike_gemm.py --m 1 --out "$out/default" \
      > "$out/w8aspike_default.log" 2>&1
    sweep_into_table 330 "$out/w8aspike_sweep.log" --m 1 --kinds gemv
    NEURONCHIP_W8ASPIKE_PLANS="$plans" timeout 130 python3 benchmarks/w8aspike_gemm.py --m 1 16 64 4096 --out "$out" \
      > "$out/w8aspike_gemm.log" 2>&1
    grep -h "M=    1" "$out/w8aspike_before.log" "$out/w8aspike_default.log"; grep "M=    1" "$out/w8aspike_sweep.log"
    tail -22 "$out/w8aspike_gemm.log" ;;
  w8aspike-prefill-sweep)
    previous_code 130 "$out/w8aspike_prefill_before.log" benchmarks/w8aspike_gemm.py --m 64 4096 --out "$out/before"
    timeout 100 python3 benchmarks/w8aspike_gemm.py --m 64 4096 --out "$out/after" > "$out/w8aspike_prefill_after.log" 2>&1
    grep -h "M= 4096" "$out/w8aspike_prefill_before.log" "$out/w8aspike_prefill_after.log"
    sweep_into_table 320 "$out/w8aspike_prefill_sweep.log" --m 4096 --kinds dot --shapes qkv_proj gate_up_proj
    grep "M= 4096" "$out/w8aspike_prefill_sweep.log" ;;
  w8aspike-tests)  # the W8ASpike ops on the GPU against the naive reference (every candidate plan: the sweep's)
    w8aspike_tests 400 "split_k_and_ell and (128-40 or 384-40)" "split_k_and_ell and (3584-512 or 3584-4608)" \
      "split_k_and_ell and 18944-" "not split_k_and_ell and not every_candidate" ;;
  w8aspike-dense-check)
    w8aspike_tests 150 "w8aspike_matmul_on_cuda" "split_k_and_ell and 3584-4608 and not huge" \
      "replayed or linear_on_cuda or quantize_on_cuda"  # every dense plan timed is checked by the sweep
    timeout 70 python3 benchmarks/w8aspike_gemm.py --m 64 4096 --out "$out" > "$out/w8aspike_gemm.log" 2>&1
    grep -E "M= +(64|4096)" "$out/w8aspike_gemm.log"
    sweep_into_table 320 "$out/w8aspike_dense_sweep.log" --m 4096 --kinds dense --shapes qkv_proj gate_up_proj
    grep "M= 4096" "$out/w8aspike_dense_sweep.log" ;;
  w8aspike-serve) serving spikingbrain-w8aspike 580 --lengths 4096 32768 131072 --decode-only 1024 ;;
  w8aspike-down-serve) serving spikingbrain-w8aspike-down 580 --lengths 4096 --decode-only 1024 131072 --concurrency ;;
  bf16-serve) serving spikingbrain 580 --lengths 4096 32768 131072 --decode-only 1024 ;;  # w8aspike-serve's baseline
  capacity) serving "${2:-spikingbrain}" 580 --lengths 4096 --decode-only --concurrency \
    --kv-cache-memory-gib 8 --probe "${4:-32768}" "${3:-64}" --gpu-memory-utilization "${SHARE:-0.9}" \
    --probe-limit "${PROBE_LIMIT:-240}" ;;
  capacity-both)
    INSTALLED=1 SHARE=0.45 bash "$0" capacity spikingbrain "${3:-128}" "${2:-32768}" & first=$!
    INSTALLED=1 SHARE=0.45 PORT=8022 bash "$0" capacity dense-peer "${4:-16}" "${2:-32768}"
    wait "$first" ;;
  profile)
    model="${2:-spikingbrain}"
    latency "$model" 560 "profile_$model" 18 --lengths 1024 --repeats 1 --decode-tokens 16 --profile "${3:-32768}" \
      --out "$out" ;;
  gla-prefill)
    OUT="$out" bash benchmarks/gpu_bare.sh ops
    timeout 240 python3 -m pytest -q -m gpu tests/gpu -k "cuda-graphs and not fla" -p no:cacheprovider -W ignore \
      > "$out/gpu_model_triton_prefill.log" 2>&1
    summary "$out/gpu_model_triton_prefill.log" ;;
  ttft-gla)
    for path in fla triton; do
      NEURONCHIP_GLA_PREFILL="$path" latency spikingbrain 280 "ttft_$path" 14 --lengths 32768 131072 --repeats 2 \
        --decode-tokens 16 --profile 32768 --out "$out/$path"
    done ;;
  ttft-peers)
    for model in swa-peer dense-peer; do
      latency "$model" 280 "ttft_$model" 3 --lengths 32768 131072 --repeats 2 --decode-tokens 16 --out "$out"
    done ;;
  decode-profile)
    decode_profile=(--lengths 1024 --repeats 2 --decode-tokens 64 --profile-decode 32768)
    for model in ${DECODE_MODELS:-spikingbrain swa-peer}; do
      latency "$model" 190 "decode_profile_$model" 18 "${decode_profile[@]}" --out "$out"
    done
    previous_code 190 "$out/decode_profile_before.log" benchmarks/gpu_latency.py --model spikingbrain \
      "${decode_profile[@]}" --out "$out/before"
    grep -E "^\[spikingbrain\]" "$out/decode_profile_before.log" | tail -18 ;;
  gemv) timeout 120 python3 benchmarks/decode_gemv.py ${SWEEP:+--sweep} --out "$out" 2>&1 | tee "$out/decode_gemv.log" ;;
  gemv-check)
    timeout 250 python3 -m pytest -q -m gpu tests/gpu tests/ops/test_gemv.py -k "(cuda-graphs and not fla) or bf16 or gemv" \
      -p no:cacheprovider -W ignore > "$out/gpu_gemv_tests.log" 2>&1
    summary "$out/gpu_gemv_tests.log"
    for gemv in 1 0; do
      NEURONCHIP_DECODE_GEMV=$gemv latency spikingbrain 170 "decode_gemv_$gemv" 18 --lengths 1024 --repeats 2 \
        --decode-tokens 64 --profile-decode 32768 --out "$out/gemv_$gemv"
    done ;;
  w8aspike-ratio)
    for model in spikingbrain-w8aspike spikingbrain; do
      latency "$model" 300 "ratio_$model" 3 --lengths 1024 4096 --repeats 2 --decode-tokens 128 --out "$out"
    done ;;
  engine-start)
    baseline=(); [ -d benchmarks/scratch/before ] && baseline=(--baseline benchmarks/scratch/before)
    timeout 560 python3 benchmarks/engine_start.py --repeats 2 "${baseline[@]}" --out "$out" > "$out/engine_start.log" 2>&1
    grep -a -E "^\[|cold" "$out/engine_start.log" | tail -12 ;;
  tp1) serving spikingbrain 580 --lengths 131072 524288 --decode-only --concurrency ;;
  tp2-test)  # the tiny checkpoint at TP=2 against the reference, eager and CUDA graphs at once; cold workers: minutes
    variants=(eager cuda-graphs)
    for variant in "${variants[@]}"; do
      timeout 450 python3 -m pytest -q -m gpu tests/model/test_tensor_parallel.py -k "$variant" -p no:cacheprovider \
        -W ignore > "$out/gpu_tp2_test_$variant.log" 2>&1 &
    done
    wait; for variant in "${variants[@]}"; do summary "$out/gpu_tp2_test_$variant.log"; done ;;
  tp2-tiny)  # vllm serve of a tiny checkpoint at TP=2 (CUDA graphs), a small share of each GPU
    serving spikingbrain 400 --shape tiny --tensor-parallel-size 2 --gpu-memory-utilization 0.3 --lengths 64 1024 \
      --decode-only --concurrency 1 8 --bench-input-len 512 --bench-output-len 64 ;;
  tp2) serving spikingbrain 580 --lengths 131072 524288 --decode-only --concurrency --tensor-parallel-size 2 ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
