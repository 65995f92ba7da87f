#!/usr/bin/env bash
# Issue 19's proofs on 2 CUDA GPUs: `swift sft --fsdp full_shard` full fine-tuning of a Qwen2.5-shaped model
# (random bf16 weights, synthetic rows, max_length 1024), its checkpoint read back by `swift infer`, the same run
# under DDP, and pt inference with --tensor_parallel_size 2 against one GPU (greedy tokens equal, tok/s).
#
#   TOKENIZER_DIR=<SmolLM2 tokenizer> bash scripts/gpu_proofs_sharded.sh      # from the repository root
#
# Writes $OUT/gpu_proofs_sharded.log (every command and its output); OUT defaults to
# benchmarks/results/gpu_proofs_sharded-<date>. STEPS (6) training steps. CONFIG (qwen2.5-7b; or qwen2.5-14b) the
# model's shape. PARTS (all: "tp tp_bench fsdp_full ddp_full ddp_full_fp32 lora") picks the proofs: tp = greedy
# tokens of --tensor_parallel_size 2 vs 1 GPU in fp32; tp_bench = scripts/bench_tp.py (batch-1/32 tok/s, bf16);
# fsdp_full = full fine-tuning with FSDP and its checkpoint in swift infer; ddp_full = the same run under DDP in
# pure bf16; ddp_full_fp32 = under DDP with fp32 weights (FSDP's master precision); lora = LoRA with FSDP vs DDP.
# Train tokens/s and peak memory per GPU: *_logging.jsonl.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results/gpu_proofs_sharded-$(date +%Y%m%d)}
W=${WORK_DIR:-/tmp/gpu_proofs_sharded}
STEPS=${STEPS:-6}
CONFIG=${CONFIG:-qwen2.5-7b}
PARTS=${PARTS:-"tp tp_bench fsdp_full ddp_full ddp_full_fp32 lora"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT" "$W"
LOG=$OUT/gpu_proofs_sharded.log
: >"$LOG"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
run() { log "START $*"; local t0=$SECONDS; "$@" >>"$LOG" 2>&1; local rc=$?; log "END rc=$rc in $((SECONDS - t0))s"; return $rc; }

if ! python3 -c "import datasets" 2>/dev/null && [ -d .whl ]; then  # sft reads datasets with `datasets`
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi -L | tee -a "$LOG"
M=$W/$CONFIG-random
[ -f "$M/config.json" ] || run python3 scripts/gpu_proofs.py build --config "$CONFIG" --tokenizer_dir "${TOKENIZER_DIR:-.gpu/tokenizer}" --out "$M"
run python3 scripts/gpu_proofs.py data --out "$W/train.jsonl" --eval_out "$W/eval.txt" --rows 200

ASK="Tell story number 7 in 20 sentences."
infer() {  # greedy reply of the 7B model on pt, in fp32 (bf16 sums in another order tip random weights' near-ties)
    echo "$ASK" | python3 -m swiftcli infer --model_id_or_path "$M" --infer_backend pt --tensor_parallel_size "$1" \
        --enforce_eager true --dtype fp32 --max_new_tokens 32 --temperature 0 --stream false 2>>"$LOG"
}
if has tp; then
    log "START pt inference, 1 GPU"; t0=$SECONDS; ONE=$(infer 1); log "END in $((SECONDS - t0))s: $ONE"
    log "START pt inference, --tensor_parallel_size 2"; t0=$SECONDS; TWO=$(infer 2); log "END in $((SECONDS - t0))s: $TWO"
    [ "$ONE" = "$TWO" ] && log "TP greedy equal: yes" || log "TP greedy equal: NO"
fi

full_ft() {  # full fine-tuning on 2 GPUs; $1: fsdp or ddp, $2: --dtype. Checkpoints without optimizer state
    local SHARD=() FROM TAG=$1_$2_$CONFIG  # (a 14B's fp32 AdamW state is 110 GB, near the disk's size)
    FROM=$(wc -l <"$LOG")
    [ "$1" = fsdp ] && SHARD=(--fsdp full_shard)
    run env NPROC_PER_NODE=2 python3 -m swiftcli sft --model_id_or_path "$M" --dataset "$W/train.jsonl" --sft_type full \
        "${SHARD[@]}" --max_length 1024 --max_steps "$STEPS" --batch_size 1 --gradient_accumulation_steps 1 \
        --gradient_checkpointing true --logging_steps 1 --eval_steps "$STEPS" --save_steps "$STEPS" \
        --save_only_model true --dataset_test_ratio 0.02 --output_dir "$W/full_$TAG" --dtype "$2"
    local rc=$?
    RUN=$(ls -d "$W"/full_$TAG/*/v* 2>/dev/null | tail -1)
    [ -n "$RUN" ] && cp "$RUN"/logging.jsonl "$OUT"/full_${TAG}_logging.jsonl 2>/dev/null && tail -1 "$RUN"/logging.jsonl | tee -a "$LOG"
    [ $rc -ne 0 ] && tail -n +"$FROM" "$LOG" | grep -q "CUDA out of memory" && log "full fine-tuning $TAG: out of memory"
    return $rc
}
if has fsdp_full; then
    full_ft fsdp bf16
    CKPT=$(ls -d "$RUN"/checkpoint-* 2>/dev/null | tail -1)
    [ -n "$CKPT" ] && log "START the FSDP checkpoint in swift infer" && \
        echo "$ASK" | python3 -m swiftcli infer --ckpt_dir "$CKPT" --infer_backend pt --enforce_eager true \
            --max_new_tokens 16 --temperature 0 --stream false >>"$LOG" 2>&1 && log "END checkpoint generates"
    rm -rf "$W"/full_fsdp_*  # disk for the next runs
fi
if has ddp_full; then  # pure bf16 under DDP (8 bytes a parameter per GPU: FSDP's fp32 master weights, halved)
    full_ft ddp bf16; rm -rf "$W"/full_ddp_*
fi
if has ddp_full_fp32; then  # DDP with fp32 weights: the master precision FSDP trains with (accelerate upcasts)
    full_ft ddp fp32; rm -rf "$W"/full_ddp_*
fi
if has tp_bench; then
    run python3 scripts/bench_tp.py --model_dir "$M" --sizes 1,2 --dtype bf16
    tail -8 "$LOG"
fi

if has lora; then  # the same LoRA run sharded (FSDP) and replicated (DDP), side by side
    for MODE in fsdp ddp; do
        SHARD=(); [ "$MODE" = fsdp ] && SHARD=(--fsdp full_shard)
        run env NPROC_PER_NODE=2 python3 -m swiftcli sft --model_id_or_path "$M" --dataset "$W/train.jsonl" \
            --sft_type lora "${SHARD[@]}" --max_length 1024 --max_steps "$STEPS" --batch_size 1 \
            --gradient_accumulation_steps 1 --gradient_checkpointing true --logging_steps 1 --eval_steps 1000 \
            --save_steps 1000 --dataset_test_ratio 0.02 --output_dir "$W/lora_$MODE" --dtype bf16
        RUN=$(ls -d "$W"/lora_$MODE/*/v* 2>/dev/null | tail -1)
        [ -n "$RUN" ] && cp "$RUN"/logging.jsonl "$OUT"/lora_${MODE}_logging.jsonl && tail -1 "$RUN"/logging.jsonl | tee -a "$LOG"
    done
fi
nvidia-smi --query-gpu=memory.used --format=csv >>"$LOG"
