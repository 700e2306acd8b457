#!/usr/bin/env bash
# The real-photo recipe, from a clean state, through the project's own commands.
#
#   benchmarks/real_photos.sh [DATA_DIR] [SEED] [extra dvc exp run -S options...]
#
# Clones this repository into a temp folder (nothing cached: every stage runs), points data.dir
# at DATA_DIR (default ../shared/datasets/hymenoptera/train, read in place, never copied into
# git), runs the recipe with `dvc exp run`, prints the timing and metrics, and prints as its
# last line the path of the resulting checkpoint (usable by `python -m finetuner evaluate`).
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
recipe=(-S "data.dir=$data" -S "seed=$seed"
        -S preprocess.image_size=auto -S preprocess.train_views=5 -S preprocess.hflip=true
        -S "preprocess.crop_scale=[0.5,1.0]" -S preprocess.rotation=15
        -S data.val_fraction=0.15 -S data.test_fraction=0.2
        -S lr=0.01 -S freeze_depth=0 -S train.epochs=8)
start=$(date +%s.%N)
dvc exp run "${recipe[@]}" "$@" >"$work/run.log" 2>&1 || { tail -40 "$work/run.log"; exit 1; }
end=$(date +%s.%N)
echo "wall time of the whole pipeline: $(python3 -c "print(f'{$end - $start:.0f} s')")"
python3 -c "import json; m = json.load(open('metrics/eval.json')); print('test accuracy', round(m['accuracy'], 4), 'macro_f1', round(m['macro_f1'], 4), 'best_val_acc', round(m['best_val_acc'], 4))"
echo "$work/models/model.pt"
