"""Stage finetune: build the backbone, replace the head, freeze, train, keep the best epoch.

    python stages/finetune.py PREPARED_DIR MODEL_OUT HISTORY_CSV
"""
import sys

import torch

from finetuner.data.prepared import load_prepared
from finetuner.io import write_csv
from finetuner.models import build_model
from finetuner.models.checkpoint import save_checkpoint
from finetuner.params import load_params, to_dict
from finetuner.runtime import resolve_device, seed_everything, set_threads
from finetuner.training.loop import TrainData, fit


def main(prepared_dir: str, model_out: str, history_csv: str) -> None:
    params = load_params()
    device = resolve_device(params.device)
    set_threads(params.threads)
    seed_everything(params.seed)
    data = load_prepared(prepared_dir)
    model = build_model(params.model.arch, params.model.weights, len(data.class_names))
    tensors = TrainData(torch.from_numpy(data.images["train"].copy()),
                        torch.from_numpy(data.labels["train"]),
                        torch.from_numpy(data.images["val"].copy()),
                        torch.from_numpy(data.labels["val"]),
                        data.train_views, len(data.class_names))
    result = fit(model, tensors, params, device)
    best = result.history[result.best_epoch - 1]
    save_checkpoint(model_out, model, params.model.arch, data.class_names, data.image_size,
                    data.crop_pct, {"params": to_dict(params), "history": result.history,
                                    "best_epoch": result.best_epoch, "best_val_acc": best["val_acc"],
                                    "train_seconds": result.seconds,
                                    "epochs_run": len(result.history),
                                    "stopped_early": result.stopped_early})
    keys = list(result.history[0])
    write_csv(history_csv, keys, [[row[k] for k in keys] for row in result.history])
    print(f"finetune: best epoch {result.best_epoch} (val acc {best['val_acc']:.4f}), "
          f"{len(result.history)} epochs in {result.seconds:.1f} s on {device} -> {model_out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
