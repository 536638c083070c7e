"""Worker for the multi-process memory-fit test: ``torchrun --nproc_per_node 2 ddp_plan_worker.py OUT BUDGET``.

Trains the tiny transformer on Blobs for one epoch with ``finetune.mode=auto`` and ``train.memory_budget=BUDGET``
(global batch 8); every rank writes ``OUT/rank{r}.json`` with the fit it trained with, or the error it stopped on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from engine_tiny import blobs_fn, engine_config, tiny_transformer_overrides

from pointdr2.engine import distributed as dist_utils
from pointdr2.engine.session import Session
from pointdr2.engine.trainer import _Trainer, default_model_fn


def main(out: str, budget: str) -> None:
    out_dir = Path(out)
    cfg = engine_config(out_dir / "run", *tiny_transformer_overrides(), "finetune.mode=auto", "train.epochs=1",
                        f"train.memory_budget={budget}")
    report: dict = {}
    try:
        s = Session(cfg, resume=False, force=False, model_fn=default_model_fn, dataset_fn=blobs_fn())
        result = _Trainer(s, stop_after_epochs=None).run()
        report = {"fit": s.memory_fit, "micro": s.micro, "mode": str(s.cfg.finetune.mode), "steps": result.global_step,
                  "world": dist_utils.world_size()}
    except ValueError as exc:  # MemoryBudgetError: every rank must stop, none may wait for the others
        report = {"error": f"{type(exc).__name__}: {exc}"}
    report["rank"] = int(os.environ.get("RANK", "0"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{report['rank']}.json").write_text(json.dumps(report, default=str))
    dist_utils.cleanup(synchronize="error" not in report)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
