#!/usr/bin/env bash
# The GPU measurements of issue #14 in one run on one GPU, in under 10 minutes.
#
#   bash benchmarks/gpu_suite.sh                     # everything, results in benchmarks/results/
#   bash benchmarks/gpu_suite.sh --dry-run           # print the commands, run nothing
#   bash benchmarks/gpu_suite.sh --only tt_410m,sel  # rerun some steps (names: --dry-run)
#   bash benchmarks/gpu_suite.sh --results "$OUT" --budget 540
#
# Steps, most important first; each is guarded by `timeout`, so one failure or hang loses only
# itself, and a step runs only while the budget (default 540 s of wall time) still holds its
# minimum, so the whole suite ends in time:
#   tt_1b, tt_410m  train_throughput: plain loop, ZeRO-2, ZeRO-3 (DeepSpeed's stage-3 defaults
#                   on the shipped GPU JSON), ZeRO-3 tuned (ds_configs/gpu_zero3_tuned.json),
#                   tuned + ZeRO-3 leaf blocks; bf16, seq 1024, micro-batch 16 x accumulation 2
#   sel             selection_cost at the paper's shapes: pythia-160m proxy and score model,
#                   pythia-1b target, seq 1024, micro-batch 4 (16 score-model draws), 50304 vocab
#   tt_llama        llama-0.5b ZeRO-3 and ZeRO-3 tuned + leaf blocks (liger-kernel when installed)
#   compile_1b      pythia-1b with train.compile: ZeRO-2 and ZeRO-3 tuned (+ leaf blocks)
#   mmb_1b, mmb_2p8b  the largest micro-batch that trains under ZeRO-3 (search past OOM)
#   compile_410m    pythia-410m with train.compile, when time is left
# Every step writes its JSON into the results folder, named after the GPU and the configuration
# (train_throughput_h100_pythia-1b_...json), its log into gpu_suite_TAG_logs/, and a line into
# gpu_suite_TAG_status.tsv; the end prints and writes gpu_suite_TAG_summary.md/.json
# (benchmarks/gpu_suite_summary.py). Variables: PYTHON (default .venv/bin/python, else python3),
# GPU_TAG (default from nvidia-smi, e.g. h100), CUDA_VISIBLE_DEVICES (default 0).

set -u -o pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
ONLY=""
RESULTS="benchmarks/results"
BUDGET="${SUITE_BUDGET_S:-540}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only) ONLY="${2:?--only needs step names}"; shift ;;
        --results) RESULTS="${2:?--results needs a folder}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.." || exit 2
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=".venv/bin/python"
else
    PY="python3"
fi

gpu_tag() {
    local name
    name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
    name="$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | sed 's/nvidia//; s/geforce//')"
    name="$(printf '%s' "$name" | awk '{print $1}' | tr -cd 'a-z0-9')"
    printf '%s' "${name:-gpu}"
}
TAG="${GPU_TAG:-$(gpu_tag)}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"

LOGS="$RESULTS/gpu_suite_${TAG}_logs"
STATUS="$RESULTS/gpu_suite_${TAG}_status.tsv"
START=$SECONDS

TT="benchmarks/train_throughput.py"
GPU_TRAIN=(--seq 1024 --micro-batch 16 --accumulation 2 --precision bf16 --device cuda
           --steps 3 --warmup 2 --rounds 1)
TUNED="ds_configs/gpu_zero3_tuned.json"
LEAF="deepspeed.zero3_leaf_blocks=true"

selected() {
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

# run_step NAME MAX_SECONDS MIN_SECONDS OUTPUT_JSON -- COMMAND...
run_step() {
    local name="$1" limit="$2" minimum="$3" output="$4"
    shift 5
    selected "$name" || return 0
    if [ "$DRY_RUN" = 1 ]; then
        printf '[%s] timeout %ss' "$name" "$limit"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$minimum" ]; then
        printf '%s\tskipped\t-\t0\t%s\t-\n' "$name" "$output" >>"$STATUS"
        echo "== $name: skipped (${left}s of the budget left, needs ${minimum}s)"
        return 0
    fi
    [ "$left" -lt "$limit" ] && limit="$left"
    local log="$LOGS/$name.log" began=$SECONDS rc status
    echo "== $name (at most ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case "$rc" in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - began))" \
        "$output" "$log" >>"$STATUS"
    echo "   $status (rc $rc, $((SECONDS - began))s); log $log"
    [ "$status" = ok ] || tail -n 5 "$log" | sed 's/^/   | /'
}

if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$LOGS" "$TORCHINDUCTOR_CACHE_DIR" "$TORCH_EXTENSIONS_DIR"
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_suite.sh: $PY sees no CUDA device (set PYTHON to a CUDA build of torch)" >&2
        exit 2
    fi
    if [ -z "$ONLY" ] || [ ! -f "$STATUS" ]; then  # a rerun of some steps appends to the last
        printf 'step\tstatus\trc\tseconds\toutput\tlog\n' >"$STATUS"
    fi
    nvidia-smi >"$RESULTS/gpu_suite_${TAG}_nvidia_smi.txt" 2>&1
    "$PY" -m pip freeze >"$RESULTS/gpu_suite_${TAG}_pip_freeze.txt" 2>/dev/null
fi

for preset in pythia-1b pythia-410m; do
    short="${preset#pythia-}"
    json="ds_configs/pythia_${short}.json"
    out="$RESULTS/train_throughput_${TAG}_${preset}_bf16_seq1024_mb16_acc2_zero_sweep.json"
    limit=150
    [ "$preset" = pythia-410m ] && limit=120
    run_step "tt_${short}" "$limit" 60 "$out" -- \
        "$PY" "$TT" --preset "$preset" "${GPU_TRAIN[@]}" --ds-config "$json" --stages 2,3 \
        --variant "zero3_tuned=$TUNED" --variant "zero3_tuned_leaf=$TUNED $LEAF" --output "$out"
done

out="$RESULTS/selection_cost_${TAG}_pythia-160m_proxy_pythia-1b_target_seq1024_mb4.json"
run_step sel 180 90 "$out" -- \
    "$PY" benchmarks/selection_cost.py --device cuda --proxy-preset pythia-160m \
    --target-preset pythia-1b --seq-length 1024 --micro-batch 4 --upper-batch 16 \
    --vocab-size 50304 --round-steps 0 --outer-steps 3 --proxy-warmup-steps 2 --repeats 3 \
    --pool-repeat 16 --throughput-sequences 2048 --set bliss.diagnostic_sequences=0 \
    --set bliss.batch_size=4 --set bliss.upper_batch_size=16 --set bliss.target_batch_size=4 \
    --set bliss.score_batch_size=256 --set target_max_length=1024 --output "$out"

out="$RESULTS/train_throughput_${TAG}_llama-0.5b_bf16_seq1024_mb16_acc2_zero3.json"
run_step tt_llama 90 45 "$out" -- \
    "$PY" "$TT" --preset llama-0.5b "${GPU_TRAIN[@]}" --ds-config ds_configs/llama_0p5b.json \
    --stages 3 --variant "zero3_tuned_leaf=$TUNED $LEAF" --liger auto --output "$out"

out="$RESULTS/train_throughput_${TAG}_pythia-1b_bf16_seq1024_mb16_acc2_compile.json"
run_step compile_1b 150 90 "$out" -- \
    "$PY" "$TT" --preset pythia-1b "${GPU_TRAIN[@]}" --ds-config ds_configs/pythia_1b.json \
    --stages 2 --variant "zero3_tuned_leaf=$TUNED $LEAF" --compile --output "$out"

out="$RESULTS/train_throughput_${TAG}_pythia-1b_bf16_seq1024_max_micro_batch_zero3.json"
run_step mmb_1b 100 50 "$out" -- \
    env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    "$PY" "$TT" --preset pythia-1b --seq 1024 --precision bf16 --device cuda \
    --ds-config ds_configs/pythia_1b.json --stages 3 --find-max-micro-batch \
    --search-start 16 --search-limit 256 --search-probes 6 --output "$out"

out="$RESULTS/train_throughput_${TAG}_pythia-2.8b_bf16_seq1024_max_micro_batch_zero3.json"
run_step mmb_2p8b 120 60 "$out" -- \
    env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    "$PY" "$TT" --preset pythia-2.8b --seq 1024 --precision bf16 --device cuda \
    --stages "" --variant "zero3=ds_configs/pythia_2p8b.json" --find-max-micro-batch \
    --search-start 8 --search-limit 128 --search-probes 5 --output "$out"

out="$RESULTS/train_throughput_${TAG}_pythia-410m_bf16_seq1024_mb16_acc2_compile.json"
run_step compile_410m 120 90 "$out" -- \
    "$PY" "$TT" --preset pythia-410m "${GPU_TRAIN[@]}" --ds-config ds_configs/pythia_410m.json \
    --stages 2 --variant "zero3_tuned_leaf=$TUNED $LEAF" --compile --output "$out"

SUMMARY=("$PY" benchmarks/gpu_suite_summary.py --results "$RESULTS" --tag "$TAG")
if [ "$DRY_RUN" = 1 ]; then
    printf '[summary]'
    printf ' %q' "${SUMMARY[@]}"
    printf '\n'
    exit 0
fi
"${SUMMARY[@]}"
echo "gpu_suite.sh: $((SECONDS - START))s in all; results in $RESULTS"
