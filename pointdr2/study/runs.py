"""Stage 2 of the study: training runs, each a ``pointdr2 train`` process, and what they wrote.

A run is described by a :class:`RunSpec` (shipped config + overrides + run directory). Runs go through
the real command line, ``python -m pointdr2 train CONFIG key=value ... --force``, exactly what a user
or an outside check runs; ``workers`` of them at a time, each with ``threads`` intra-op threads (two
one-thread processes use 2 CPU cores better than one two-thread process for models this small).

A finished run (``metrics.json``, ``metrics.jsonl``, ``test_items.npz`` or ``encoder.pth`` as needed,
and a ``config.yaml`` equal to the spec's resolved config) is reused, so a killed study continues where
it stopped; ``force`` reruns everything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pointdr2.config import load_config
from pointdr2.engine.checkpoint import load_checkpoint, save_atomic
from pointdr2.engine.evaluator import load_items
from pointdr2.engine.logger import read_records
from pointdr2.progress import bar as progress_bar

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("cls_head_finetune.", "head.", "prediction.")


class StudyRunError(RuntimeError):
    """A training run of the study failed; the message names the run and its last error line."""


@dataclass
class RunSpec:
    """One training run of the study."""

    key: str  # e.g. "transformer/dr2net/seed0"
    config: Path
    overrides: list[str]
    run_dir: Path
    kind: str = "finetune"  # "pretrain" | "finetune"
    meta: dict[str, Any] = field(default_factory=dict)

    def all_overrides(self) -> list[str]:
        return [*self.overrides, f"run.dir={self.run_dir}", "run.progress=false"]

    def resolved(self):
        return load_config(self.config, self.all_overrides())


def finished(spec: RunSpec) -> bool:
    """The run directory holds a completed run of exactly this spec's config."""
    d = spec.run_dir
    needed = ["metrics.json", "metrics.jsonl", "config.yaml", "study_seconds.json"]
    needed += ["encoder.pth"] if spec.kind == "pretrain" else ["test_items.npz"]
    if not all((d / n).is_file() for n in needed):
        return False
    try:
        saved = yaml.safe_load((d / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    want = spec.resolved().to_dict()
    if isinstance(saved, dict) and "num_classes" not in want.get("model", {}):
        saved.get("model", {}).pop("num_classes", None)  # filled in by the trainer from the dataset
    same = saved == want
    if not same:
        log.warning("%s holds a run of another config; running it again", d)
    return same


def export_encoder(run_dir: Path, keep_head: bool = False) -> Path:
    """``run_dir/encoder.pth``, the weights finetuning starts from: the best checkpoint's without its task head
    (a new task gets a new head) or, with ``keep_head`` (the finetuning task has the same label set), all of them."""
    state = load_checkpoint(run_dir / "best.pth")["model"]
    encoder = {k: v for k, v in state.items() if keep_head or not k.startswith(HEAD_PREFIXES)}
    save_atomic({"base_model": encoder}, run_dir / "encoder.pth")
    return run_dir / "encoder.pth"


def _run_one(spec: RunSpec, threads: int) -> float:
    """Run ``pointdr2 train`` for ``spec`` in a fresh process; returns its wall seconds."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pointdr2", "train", str(spec.config), *spec.all_overrides(), "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(spec.run_dir / "stderr.log", "w", encoding="utf-8") as err:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (spec.run_dir / "stderr.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        raise StudyRunError(f"run {spec.key} failed (exit {proc.returncode}): {last.strip()} "
                            f"(full log: {spec.run_dir / 'stderr.log'})")
    if spec.kind == "pretrain":
        export_encoder(spec.run_dir, keep_head=bool(spec.meta.get("keep_head", False)))
    (spec.run_dir / "study_seconds.json").write_text(json.dumps({"train_seconds": seconds, "threads": threads}) + "\n")
    return seconds


def execute(specs: Sequence[RunSpec], *, workers: int, threads: int, force: bool = False, progress: bool = True,
            desc: str = "runs", on_done: Callable[[RunSpec], None] | None = None) -> None:
    """Run every spec not already finished, ``workers`` at a time, longest expected first.

    ``on_done(spec)`` is called after each run that finished.

    A spec whose ``meta["after"]`` names another spec's key starts once that one is done (a finetuning
    waits for its own track's pretraining only).
    """
    todo = [s for s in specs if force or not finished(s)]
    if not todo:
        return
    todo.sort(key=lambda s: -float(s.meta.get("cost", 1.0)))
    waiting = {s.key for s in todo}
    bar = progress_bar(total=len(todo), desc=desc, unit="run", leave=False, enabled=progress, every=60.0)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        running: dict = {}
        while todo or running:
            ready = [s for s in todo if s.meta.get("after") not in waiting]
            while ready and len(running) < max(1, workers) and not errors:
                spec = ready.pop(0)
                todo.remove(spec)
                running[pool.submit(_run_one, spec, threads)] = spec
            if not running:
                if todo and not errors:
                    raise StudyRunError(f"runs {', '.join(s.key for s in todo)} wait for runs that are not scheduled")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                spec = running.pop(fut)
                try:
                    log.info("study run %s done in %.0f s", spec.key, fut.result())
                    if on_done is not None:
                        on_done(spec)
                except BaseException as exc:  # noqa: BLE001 - reported after the running runs end
                    errors.append(exc)
                waiting.discard(spec.key)
                bar.update(1)
            if errors:
                todo.clear()
    bar.close()
    if errors:
        raise errors[0]


@dataclass
class RunResult:
    """What a finished run wrote, in plain numbers (as stored in study.json)."""

    key: str
    run_dir: str
    seed: int | None
    test: dict[str, Any]
    best_epoch: int | None
    seconds: float | None
    curve: list[float]  # validation metric per epoch
    steps: list[dict[str, Any]]  # step records of metrics.jsonl (alpha, beta, stacks, loss, ...)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "run_dir": self.run_dir, "seed": self.seed, "test": self.test,
                "best_epoch": self.best_epoch, "train_seconds": self.seconds, "curve": self.curve, "steps": self.steps}


def read_run(spec: RunSpec, metric: str) -> RunResult:
    """Metrics, validation curve and step records of a finished run."""
    d = spec.run_dir
    metrics = json.loads((d / "metrics.json").read_text())
    seconds = json.loads((d / "study_seconds.json").read_text())["train_seconds"]
    epochs = read_records(d / "metrics.jsonl", "epoch")
    curve = [float(r["val"][metric]) for r in epochs if isinstance(r.get("val"), dict) and metric in r["val"]]
    steps = read_records(d / "metrics.jsonl", "step")
    keep = ("step", "epoch", "loss", "alpha", "beta", "reconstruction_error", "cache_every", "stacks",
            "activation_bytes", "samples_per_s")
    steps = [{k: r[k] for k in keep if k in r} for r in steps]
    return RunResult(spec.key, str(d), spec.meta.get("seed"), metrics.get("test", {}), metrics.get("best_epoch"),
                     seconds, curve, steps)


def run_items(spec: RunSpec) -> dict:
    """Per-item test records of a finished finetuning run (see ``pointdr2.engine.evaluator``)."""
    return load_items(spec.run_dir / "test_items.npz")
