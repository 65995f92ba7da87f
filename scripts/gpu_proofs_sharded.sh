#!/usr/bin/env bash
# Issue 19's proofs on 2 CUDA GPUs: `swift sft --fsdp full_shard` full fine-tuning of a Qwen2.5-7B-shaped model
# (random bf16 weights, synthetic rows, max_length 1024), its checkpoint read back by `swift infer`, and pt inference
# with --tensor_parallel_size 2 against one GPU (greedy tokens equal).
#
#   TOKENIZER_DIR=<SmolLM2 tokenizer> bash scripts/gpu_proofs_sharded.sh      # from the repository root
#
# Writes $OUT/gpu_proofs_sharded.log (every command and its output); OUT defaults to
# benchmarks/results/gpu_proofs_sharded-<date>. STEPS (6) training steps. PARTS (all: "tp fsdp_full lora") picks the
# proofs: tp = greedy tokens of --tensor_parallel_size 2 vs 1 GPU; fsdp_full = full fine-tuning with FSDP and its
# checkpoint in swift infer; lora = LoRA with FSDP vs DDP (train tokens/s, peak memory per GPU: lora_*_logging.jsonl).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-benchmarks/results/gpu_proofs_sharded-$(date +%Y%m%d)}
W=${WORK_DIR:-/tmp/gpu_proofs_sharded}
STEPS=${STEPS:-6}
PARTS=${PARTS:-"tp fsdp_full lora"}
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
M=$W/qwen2.5-7b-random
run python3 scripts/gpu_proofs.py build --config qwen2.5-7b --tokenizer_dir "${TOKENIZER_DIR:-.gpu/tokenizer}" --out "$M"
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

if has fsdp_full; then
    run env NPROC_PER_NODE=2 python3 -m swiftcli sft --model_id_or_path "$M" --dataset "$W/train.jsonl" --sft_type full \
        --fsdp full_shard --max_length 1024 --max_steps "$STEPS" --batch_size 1 --gradient_accumulation_steps 1 \
        --gradient_checkpointing true --logging_steps 1 --eval_steps "$STEPS" --save_steps "$STEPS" --dataset_test_ratio 0.02 \
        --output_dir "$W/out" --dtype bf16
    RUN=$(ls -d "$W"/out/*/v* 2>/dev/null | tail -1)
    [ -n "$RUN" ] && cp "$RUN"/logging.jsonl "$OUT"/fsdp_full_logging.jsonl 2>/dev/null
    CKPT=$(ls -d "$RUN"/checkpoint-* 2>/dev/null | tail -1)
    [ -n "$CKPT" ] && log "START the FSDP checkpoint in swift infer" && \
        echo "$ASK" | python3 -m swiftcli infer --ckpt_dir "$CKPT" --infer_backend pt --enforce_eager true \
            --max_new_tokens 16 --temperature 0 --stream false >>"$LOG" 2>&1 && log "END checkpoint generates"
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
