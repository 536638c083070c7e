"""The study's run matrix: which ``pointdr2 train`` runs, with which overrides, in which folders.

Per track: one pretraining (conventional, on the pretraining task), then finetuning of its encoder in
every mode of :data:`~pointdr2.study.settings.MODES` x ``seeds``; a conventional run from random
initialisation (does pretraining transfer?); and, on the transformer track, the recipe ablation
(:data:`~pointdr2.study.settings.VARIANTS`, backprop exact, ``ablation_seeds`` seeds).

Seeds change the head's initialisation, the data order, the augmentation, drop-path and the validation
carve; the test data and the schedules are identical across modes, so seed s of one mode is paired with
seed s of another (a mode with fewer seeds, ``Settings.mode_seeds``, is paired on the seeds it has).
"""

from __future__ import annotations

from pathlib import Path

from pointdr2.study.runs import RunSpec
from pointdr2.study.settings import MODES, TRACKS, VARIANTS, Settings, config_path

# Relative cost of a mode (for scheduling the longest runs first).
COST = {"conventional": 1.0, "checkpoint": 2.2, "dr2net": 2.3, "dr2net-exact": 1.1}


def data_overrides(out: Path, track: str, stage: str) -> list[str]:
    t = TRACKS[track]
    root = t.pretrain_root if stage == "pretrain" else t.finetune_root
    return [f"dataset.root={Path(out) / 'data' / root}"]


def pretrain_spec(out: Path, track: str, s: Settings) -> RunSpec:
    t = TRACKS[track]
    overrides = [*s.common.get(track, []), *s.pretrain.get(track, []), *data_overrides(out, track, "pretrain"),
                 "finetune.mode=conventional", "train.seed=0"]
    return RunSpec(f"{track}/pretrain", config_path(t.pretrain_config), overrides, Path(out) / track / "pretrain",
                   kind="pretrain", meta={"cost": 3.0, "seed": 0, "keep_head": t.keep_head})


def _finetune_base(out: Path, track: str, s: Settings) -> list[str]:
    return [*s.common.get(track, []), *s.finetune.get(track, []), *data_overrides(out, track, "finetune")]


def finetune_specs(out: Path, track: str, s: Settings) -> list[RunSpec]:
    """Every mode x seed, finetuning the pretrained encoder."""
    t = TRACKS[track]
    encoder = Path(out) / track / "pretrain" / "encoder.pth"
    specs = []
    for seed in range(s.seeds):
        for mode, mode_overrides in MODES.items():
            if seed >= s.mode_seeds.get(track, {}).get(mode, s.seeds):
                continue
            overrides = [*_finetune_base(out, track, s), *mode_overrides, f"model.pretrained={encoder}",
                         f"train.seed={seed}"]
            specs.append(RunSpec(f"{track}/{mode}/seed{seed}", config_path(t.finetune_config), overrides,
                                 Path(out) / track / mode / f"seed{seed}",
                                 meta={"cost": COST[mode], "seed": seed, "mode": mode, "track": track,
                                       "after": f"{track}/pretrain"}))
    return specs


def scratch_spec(out: Path, track: str, s: Settings) -> RunSpec:
    """Conventional finetuning from random initialisation (seed 0): what pretraining is worth."""
    t = TRACKS[track]
    overrides = [*_finetune_base(out, track, s), *MODES["conventional"], "model.pretrained=null", "train.seed=0"]
    return RunSpec(f"{track}/scratch/seed0", config_path(t.finetune_config), overrides,
                   Path(out) / track / "scratch" / "seed0", meta={"cost": 1.0, "seed": 0, "mode": "scratch"})


def ablation_specs(out: Path, track: str, s: Settings, epochs: int) -> dict[str, list[RunSpec]]:
    """Recipe variants x ablation seeds, dr2net with backprop exact (a variant's change of function)."""
    t = TRACKS[track]
    encoder = Path(out) / track / "pretrain" / "encoder.pth"
    out_specs: dict[str, list[RunSpec]] = {}
    for name in s.ablation_variants:
        extra = [o.format(two_thirds=round(2 * epochs / 3, 2)) for o in VARIANTS[name]["overrides"]]
        specs = []
        for seed in range(s.ablation_seeds):
            overrides = [*_finetune_base(out, track, s), *MODES["dr2net-exact"], *extra,
                         f"model.pretrained={encoder}", f"train.seed={seed}"]
            folder = name.replace("/", "-").replace("=", "-").replace("+", "plus").replace(">", "gt").replace(" ", "-")
            specs.append(RunSpec(f"{track}/ablation/{name}/seed{seed}", config_path(t.finetune_config), overrides,
                                 Path(out) / track / "ablation" / folder / f"seed{seed}",
                                 meta={"cost": COST["dr2net-exact"], "seed": seed, "variant": name,
                                       "after": f"{track}/pretrain"}))
        out_specs[name] = specs
    return out_specs
