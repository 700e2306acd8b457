"""Stage input_spec: the input size and crop the chosen architecture needs, as a small JSON.

    python stages/input_spec.py OUT_JSON

preprocess depends on this file instead of on ``model.arch``: switching to an architecture
with the same input size and crop leaves the file unchanged, so DVC skips preprocess.
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

from finetuner.arch_params import image_size, load_arch_params
from finetuner.io import write_json
from finetuner.models import input_spec


def main(out_json: str) -> None:
    params = load_arch_params()
    write_json(out_json, {"image_size": image_size(params),
                          "crop_pct": input_spec(params.model.arch).crop_pct})


if __name__ == "__main__":
    run_stage("input_spec", main, "OUT_JSON")
