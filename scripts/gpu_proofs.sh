#!/usr/bin/env bash
# GPU proofs of `swift sft` (1 GPU vs NPROC_PER_NODE=2, LoRA and full) and `swift export --quant_method gptq|awq`,
# on a Qwen2.5-1.5B-shaped model with random weights and a real tokenizer (nothing is downloaded).
#
#   bash scripts/gpu_proofs.sh                 # on a machine with 2 CUDA GPUs, from the repository root
#
# Needs torch (CUDA), transformers, peft, accelerate, matplotlib, datasets and auto-round; wheels in .whl/ are
# installed into /tmp/site first when those don't import (a machine without network). TOKENIZER_DIR: a tokenizer with
# a chat template (default .gpu/tokenizer, SmolLM2's). Writes $OUT/gpu_proofs.json (every number) and
# $OUT/gpu_proofs.log; OUT defaults to benchmarks/results/gpu_proofs-<date>. DEADLINE_S (default 900) bounds the
# whole run: a step that would start too late is skipped and says so.
set -u
export PYTHONUNBUFFERED=1
START=$SECONDS
DEADLINE_S=${DEADLINE_S:-900}
OUT=${OUT:-benchmarks/results/gpu_proofs-$(date +%Y%m%d)}
W=${WORK_DIR:-/tmp/gpu_proofs}
TOKENIZER_DIR=${TOKENIZER_DIR:-.gpu/tokenizer}
STEPS=${STEPS:-30}
BATCH_SIZE=${BATCH_SIZE:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
MAX_LENGTH=${MAX_LENGTH:-1024}
# CONFIG (default qwen2.5-1.5b; tiny for a CPU smoke test of this script), STEPS (30), BATCH_SIZE (8 rows per GPU
# and forward pass), GLOBAL_BATCH (16 rows per optimizer step, whatever the number of GPUs) and MAX_LENGTH (1024)
# change the runs; QUANT=0 skips the quantization part.
mkdir -p "$OUT" "$W/results"
LOG=$OUT/gpu_proofs.log
: >"$LOG"
log() { echo "[$(date +%T) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
left() { echo $((DEADLINE_S - (SECONDS - START))); }
# run NAME NEEDED_S CMD...: run CMD (output into the log) if NEEDED_S seconds are left, within what is left
run() {
    local name=$1 need=$2; shift 2
    if [ "$(left)" -lt "$need" ]; then log "SKIP $name: $(left)s left, needs about ${need}s"; return 99; fi
    log "START $name: $*"
    local t0=$SECONDS
    timeout "$(left)" "$@" >>"$LOG" 2>&1
    local rc=$?
    log "END $name: rc=$rc in $((SECONDS - t0))s"
    return $rc
}

if ! python3 -c "import datasets, auto_round" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 || { log "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L | tee -a "$LOG"
python3 -c "
import importlib.metadata as m
names = ('torch', 'transformers', 'peft', 'accelerate', 'datasets', 'auto-round', 'pyarrow', 'triton')
print({p: m.version(p) for p in names})
" 2>&1 | tee -a "$LOG"

CONFIG=${CONFIG:-qwen2.5-1.5b}
M=$W/$CONFIG-random
run build 60 python3 scripts/gpu_proofs.py build --config "$CONFIG" --tokenizer_dir "$TOKENIZER_DIR" --out "$M"
run data 30 python3 scripts/gpu_proofs.py data --out "$W/train.jsonl" --eval_out "$W/eval.txt" --rows 2000

# sft NAME NPROC NEEDED_S ARGS...: GLOBAL_BATCH rows per optimizer step whatever the number of processes
sft() {
    local name=$1 nproc=$2 need=$3; shift 3
    local ga=$((GLOBAL_BATCH / (BATCH_SIZE * nproc)))
    local cmd="NPROC_PER_NODE=$nproc swift sft"
    [ "$nproc" -gt 1 ] || cmd="CUDA_VISIBLE_DEVICES=0 swift sft"
    cmd="$cmd --model_id_or_path $M --template_type chatml --dataset train.jsonl \
--dataset_test_ratio 0 --max_length $MAX_LENGTH --batch_size $BATCH_SIZE --gradient_accumulation_steps $ga \
--max_steps $STEPS \
--logging_steps 5 --save_steps 1000 --dtype bf16 $*"
    local t0=$SECONDS launcher=(env -u NPROC_PER_NODE CUDA_VISIBLE_DEVICES=0)  # one process on 2 GPUs: DataParallel
    [ "$nproc" -gt 1 ] && launcher=(env NPROC_PER_NODE="$nproc")
    run "sft-$name" "$need" "${launcher[@]}" python3 -m swiftcli sft --model_id_or_path "$M" \
        --template_type chatml --dataset "$W/train.jsonl" --dataset_test_ratio 0 --max_length "$MAX_LENGTH" \
        --batch_size "$BATCH_SIZE" \
        --gradient_accumulation_steps "$ga" --max_steps "$STEPS" --logging_steps 5 --save_steps 1000 --dtype bf16 \
        --output_dir "$W/out-$name" "$@" || return 1
    local run_dir
    run_dir=$(dirname "$(ls -d "$W/out-$name"/*/v*/logging.jsonl | tail -1)")
    python3 scripts/gpu_proofs.py sft-summary --run_dir "$run_dir" --name "$name" --command "$cmd" \
        --wall_s $((SECONDS - t0)) --out "$W/results/sft-$name.json" 2>&1 | tee -a "$LOG"
}
LORA=(--sft_type lora --lora_target_modules ALL --learning_rate 1e-3)
FULL=(--sft_type full --learning_rate 1e-4)
sft lora-1gpu 1 90 "${LORA[@]}"
sft lora-2gpu 2 90 "${LORA[@]}"
sft full-1gpu 1 120 "${FULL[@]}"

# GPTQ and AWQ side by side, one GPU each, on the full fine-tune's checkpoint (it has learned the synthetic text, so
# perplexity means something); the random model if that run failed.
SRC=$(ls -d "$W"/out-full-1gpu/*/v*/checkpoint-* 2>/dev/null | tail -1)
SRC_ARG=(--ckpt_dir "$SRC")
[ -n "$SRC" ] || { SRC=$M; SRC_ARG=(--model_id_or_path "$M" --template_type chatml); }
quant() {
    local method=$1 gpu=$2 t0=$SECONDS
    CUDA_VISIBLE_DEVICES=$gpu python3 -m swiftcli export "${SRC_ARG[@]}" --quant_bits 4 --quant_method "$method" \
        --dataset "$W/train.jsonl" --quant_n_samples 64 --quant_seqlen 512 --output_dir "$W/q-$method" \
        >"$W/export-$method.log" 2>&1 || { echo "export $method failed"; tail -30 "$W/export-$method.log"; return 1; }
    local export_s=$((SECONDS - t0))
    CUDA_VISIBLE_DEVICES=$gpu python3 scripts/gpu_proofs.py quant-check --source "$SRC" --quantized "$W/q-$method" \
        --method "$method" --text_file "$W/eval.txt" --export_s "$export_s" --out "$W/results/quant-$method.json" \
        >"$W/check-$method.log" 2>&1 || { echo "check $method failed"; tail -30 "$W/check-$method.log"; return 1; }
}
if [ "${QUANT:-1}" = 1 ] && [ "$(left)" -gt 150 ]; then
    log "START quantize gptq (GPU 0) and awq (GPU 1) from $SRC"
    quant gptq 0 >>"$LOG" 2>&1 &
    GPTQ_PID=$!
    quant awq 1 >>"$LOG" 2>&1 &
    AWQ_PID=$!
    wait $GPTQ_PID; log "END quantize gptq rc=$?"
    wait $AWQ_PID; log "END quantize awq rc=$?"
    for m in gptq awq; do
        grep -v "it/s\]\|s/it\]" "$W/export-$m.log" | tail -15 >>"$LOG"
        tail -3 "$W/check-$m.log" >>"$LOG"
    done
    # swiftcli's own pt loader on the GPTQ output (transformers' GPTQ path wants gptqmodel): recorded as it is
    echo "Tell story number 1 in 3 sentences." | run infer-gptq 40 python3 -m swiftcli infer --ckpt_dir "$W/q-gptq" \
        --infer_backend pt --max_new_tokens 16
else
    log "SKIP quantize: $(left)s left"
fi
sft full-2gpu 2 120 "${FULL[@]}"

python3 - "$W/results" "$OUT/gpu_proofs.json" <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json, os, sys
results = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))}
for one, two in (("sft-lora-1gpu", "sft-lora-2gpu"), ("sft-full-1gpu", "sft-full-2gpu")):
    if one in results and two in results:
        a, b = results[one]["train_tokens_per_second"], results[two]["train_tokens_per_second"]
        results[two]["scaling_vs_1gpu"] = round(b / a, 3)
        results[two]["per_gpu_efficiency"] = round(b / a / 2, 3)
        print(f"{two}: {b} tok/s vs {a} on 1 GPU: x{b / a:.2f} ({b / a / 2:.0%} per GPU)")
json.dump(results, open(sys.argv[2], "w"), indent=2, ensure_ascii=False)
print("wrote", sys.argv[2], sorted(results))
EOF
log "done in $((SECONDS - START))s"
