"""Worker for the DDP test: ``torchrun --nproc_per_node W ddp_worker.py OUT_DIR REF_CKPT`` (or plain python).

Trains TinyPointNet on Blobs for one epoch into ``OUT_DIR/run`` and evaluates ``REF_CKPT`` on the
test split; rank 0 writes ``OUT_DIR/eval.json`` with the confusion matrix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from engine_tiny import blobs_fn, engine_config, tiny_model_fn

from pointdr2.engine import distributed as dist_utils
from pointdr2.engine.evaluator import evaluate
from pointdr2.engine.trainer import load_model_weights, train

# global batch 8; 24 train samples -> 3 steps; 13 test samples (odd: a padded sampler would double count)
SIZES = {"train": 24, "val": 12, "test": 13}


def config(run_dir):
    return engine_config(run_dir, "finetune.mode=conventional", "+model.name=tiny", "train.epochs=1",
                         "eval.batch_size=4")


def run(out_dir: str, ref_ckpt: str | None = None) -> dict:
    out = Path(out_dir)
    result = train(config(out / "run"), dataset_fn=blobs_fn(SIZES, jitter=0.0), model_fn=tiny_model_fn())
    report = {"test": result.test_metrics, "best": result.best_metric, "world": dist_utils.world_size()}
    if ref_ckpt:
        model = tiny_model_fn()({"num_classes": 3})
        load_model_weights(model, ref_ckpt)
        test_set = blobs_fn(SIZES, jitter=0.0)(None, "test")
        metrics = evaluate(model, test_set, device=torch.device("cpu"), batch_size=4, progress=False)
        report["eval_confusion"] = metrics["confusion"]
        report["eval_count"] = metrics["count"]
    if dist_utils.is_main():
        (out / "eval.json").write_text(json.dumps(report))
    dist_utils.cleanup(synchronize=True)  # as pointdr2 train does after a finished run
    return report


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
