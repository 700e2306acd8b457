"""Stage evaluate: the checkpoint on the test split (or on the labelled folder
``evaluate.test_dir``) -> metrics JSON, predictions, pictures; a temperature fitted on the val
split (``metrics/calibration.json``, read by ``finetuner predict/export --calibration``), the
calibration before and after it, and the coverage-accuracy curve of the reject option
(:mod:`finetuner.evaluation.report`).

    python stages/evaluate.py MODEL PREPARED_DIR METRICS_DIR

Errors in params, the checkpoint or the inputs are one line naming the param or file; every
output is written whole or not at all.
"""
from finetuner.stage import run_stage  # first: Ctrl-C during the imports below is one line

from pathlib import Path

from finetuner.arch_params import load_arch_params
from finetuner.data.folders import scored_images
from finetuner.data.images import ImageError
from finetuner.data.manifest import InputError
from finetuner.data.prepared import load_prepared
from finetuner.data.names import DatasetError
from finetuner.evaluation.report import evaluate_checkpoint, summary_line, write_report
from finetuner.models.checkpoint import CheckpointError, check_training_record, load_checkpoint
from finetuner.runtime import resolve_device, reuse_freed_memory, set_threads


def main(model_path: str, prepared_dir: str, metrics_dir: str) -> None:
    params = load_arch_params()
    set_threads(params.threads)
    reuse_freed_memory()
    device = resolve_device(params.device)
    checkpoint = load_checkpoint(model_path, device)
    check_training_record(model_path, checkpoint.info)  # before any test image is decoded
    data = load_prepared(prepared_dir)
    scored = scored_images(params.evaluate.test_dir, data, checkpoint)
    evaluation = evaluate_checkpoint(checkpoint, data, scored, model_path,
                                     params.evaluate.batch_size, device)
    write_report(Path(metrics_dir), evaluation, model_path, params.evaluate.gallery_size)
    print(summary_line(evaluation, Path(metrics_dir)))
    if evaluation.calibration_note:
        print(f"evaluate: calibration: {evaluation.calibration_note}")


if __name__ == "__main__":
    run_stage("evaluate", main, "MODEL PREPARED_DIR METRICS_DIR",
              (CheckpointError, InputError, ImageError, DatasetError))
