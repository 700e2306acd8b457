#!/usr/bin/env bash
# The real-photo recipe, from a clean state, through the project's own commands.
#
#   benchmarks/real_photos.sh [DATA_DIR] [SEED] [extra dvc exp run -S options...]
#
# Clones this repository into a temp folder (nothing cached: every stage runs), points data.dir
# at DATA_DIR (default ../shared/datasets/hymenoptera/train, read in place, never copied into
# git), runs the photos preset (`-S preset=photos`, all photos trained on; extra -S options
# are passed on) with
# `dvc exp run`, prints the timing and metrics, and prints as its last line the path of the
# resulting checkpoint (usable by `python -m finetuner evaluate`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v dvc >/dev/null && [ -x "$root/.venv/bin/dvc" ]; then
  PATH="$root/.venv/bin:$PATH"  # the README's venv, when it is not active
fi
data=${1:-$root/../shared/datasets/hymenoptera/train}
seed=${2:-0}
shift $(( $# > 2 ? 2 : $# ))
if [ ! -d "$data" ]; then
  echo "skipped: $data not found (../shared is absent)"
  exit 0
fi
data=$(cd "$data" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/finetuner-real-photos-XXXXXX")
git clone -q "$root" "$work"
cd "$work"
# test_fraction 0: every photo of the folder teaches the final model (train + val, refit), for
# a user who scores it on a separate test folder (python -m finetuner evaluate CKPT FOLDER).
# Add -S data.test_fraction=0.2 for an honest estimate from the folder itself.
recipe=(-S "data.dir=$data" -S "seed=$seed" -S preset=photos -S data.test_fraction=0)
start=$(date +%s.%N)
dvc exp run "${recipe[@]}" "$@" >"$work/run.log" 2>&1 || { tail -40 "$work/run.log"; exit 1; }
end=$(date +%s.%N)
echo "wall time of the whole pipeline: $(python3 -c "print(f'{$end - $start:.0f} s')")"
python3 -c "import json; m = json.load(open('metrics/eval.json')); print('test accuracy', round(m['accuracy'], 4), 'macro_f1', round(m['macro_f1'], 4), 'on', m['test_images'], 'images of the', m['evaluated_on'] + ';', 'chosen on val:', m['strategy'], '(val acc', m['best_val_acc'] if m['best_val_acc'] is None else round(m['best_val_acc'], 4), end='), '); print('trained on', m['trained_images'], 'images')"
echo "$work/models/model.pt"
