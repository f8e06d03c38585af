#!/usr/bin/env bash
# The GPU check (issue 16): on one CUDA GPU, the speed benchmark's modes a/b/c with trainer=gpu, then
# the book's whole table (every conf/experiment/book_* preset, random weights), into one report:
# gpu_check.json and gpu_check.md in the output folder.
#
#   bench/gpu_check.sh [--out DIR]      # on a CUDA machine: about 10 minutes on one H100-class GPU
#   bench/gpu_check.sh --dry-run        # the same steps on the CPU: tiny model, a few steps, no GPU
#
# How it keeps to 10 minutes: the bench and the book's short rows train the book's 5 epochs; the rows
# whose book time on an A100 is over a minute for 5 epochs (gpt2-large, gpt2-xl x3, padding to 1024,
# batches of one x2) train 1 epoch, each in its own process, and its checkpoints are deleted after it
# (gpt2-xl with every layer writes 18 GB). Each stage also runs under `timeout` with what is left of
# the 10 minutes (CHECK_SECONDS), so a slow machine gives a partial report rather than none.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/outputs/gpu_check
DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
BUDGET=${CHECK_SECONDS:-600}
BIG_ROWS=(book_gpt2_large book_gpt2_xl book_gpt2_xl_all_layers book_gpt2_xl_lora_r16_a8
  book_pad_to_context book_no_padding_batch1 book_no_padding_batch1_accum8)
COMMON=(model.weights=random logger=none callbacks.progress_bar.refresh_rate=0 "data.data_dir=$OUT/data/sms_spam")
if [ $DRY = 1 ]; then
  TRAINER=cpu
  BENCH=(--model gpt2-tiny --epochs 1 --matmul-seconds 0.2)
  LIMITS=(+trainer.limit_train_batches=3 +trainer.limit_val_batches=2 +trainer.limit_test_batches=2)
  COMMON+=(model=gpt2-tiny "${LIMITS[@]}")
  SHORT_ROWS='glob([book_default])'  # one row of each kind: the code path, not the numbers
  BIG_ROWS=(book_gpt2_xl)
  for o in "${LIMITS[@]}"; do BENCH+=(--override "$o"); done
else
  TRAINER=gpu
  BENCH=(--epochs 5)
  SHORT_ROWS="glob(book_*,exclude=[$(IFS=,; echo "${BIG_ROWS[*]}")])"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to torch: run it on a GPU machine, or use --dry-run" >&2
    exit 2
  fi
fi
mkdir -p "$OUT"
STAGES=$OUT/stages.tsv
: > "$STAGES"
cd "$ROOT" || exit 2

# stage NAME COMMAND...: run under what is left of the budget; record exit status and seconds.
stage() {
  local name=$1; shift
  local left=$((BUDGET - SECONDS))
  if [ $left -le 5 ]; then
    echo "[$name] skipped: the ${BUDGET} s budget is spent"
    printf '%s\tskipped\t0\n' "$name" >> "$STAGES"
    return
  fi
  echo "[$name] $*"
  local started=$SECONDS
  timeout "$left" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc = 124 ] && status=timed_out
  [ $rc != 0 ] && [ $rc != 124 ] && status="failed($rc)"
  printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - started)) >> "$STAGES"
  echo "[$name] $status after $((SECONDS - started)) s (log: $OUT/$name.log)"
}

stage data "$PY" -c "from gpt_classifier.data.sms import SpamDataModule as D; \
D(data_dir='$OUT/data/sms_spam', urls=[], cache_dir='$OUT/data/cache').prepare_data()"
stage bench "$PY" bench/finetune_speed.py "${BENCH[@]}" --trainer "$TRAINER" --no-predict \
  --data-dir "$OUT/data/sms_spam" --dir "$OUT/bench" --out "$OUT/bench.json"
stage book_short "$PY" train.py -m "experiment=$SHORT_ROWS" "trainer=$TRAINER" "${COMMON[@]}" \
  "hydra.sweep.dir=$OUT/book/short"
for row in "${BIG_ROWS[@]}"; do
  echo "[$row] 1 epoch instead of 5: its book time for 5 epochs is over a minute on an A100"
  stage "$row" "$PY" train.py "experiment=$row" "trainer=$TRAINER" trainer.max_epochs=1 "${COMMON[@]}" \
    "hydra.run.dir=$OUT/book/$row"
  rm -rf "$OUT/book/$row/checkpoints"  # gpt2-xl checkpoints are 6-18 GB each
done
"$PY" bench/gpu_report.py "$OUT" --dry-run=$DRY --seconds $SECONDS
