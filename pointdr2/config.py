"""Configuration: YAML files with ``_base_`` inheritance, dotted overrides and key checking.

A config is a tree of dicts. ``load_config(path, overrides)`` resolves it in this order:

1. ``DEFAULTS`` below (every key the engine knows, with its default),
2. the ``_base_`` files of ``path`` (a string or a list, relative to the file that names them,
   merged left to right, recursively),
3. the file itself,
4. the ``key=value`` overrides (values parsed as YAML scalars).

Keys are checked against the merged tree: a file or override may only set a key that exists in
``DEFAULTS`` or in one of its bases, except inside the *open* sections (``dataset``, ``model``) whose keys belong to the builders in ``pointdr2.data`` / ``pointdr2.models``, which
check them. An override may add a new key only when written ``+key=value``. Unknown keys raise
``ConfigError`` naming the closest known keys.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pointdr2.hints import closest, did_you_mean

__all__ = ["Config", "ConfigError", "DEFAULTS", "load_config", "dump_config", "find_config", "parse_size"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key or file."""


# Sections whose keys are owned (and validated) by the dataset / model builders.
OPEN_SECTIONS = ("dataset", "model")

# Every engine-level key with its default. Keep in step with ../shared/API.md and the README.
DEFAULTS: dict[str, Any] = {
    "dataset": {},
    "model": {},
    "finetune": {
        # dr2net | conventional | checkpoint | auto (with train.memory_budget: the cheapest mode that fits,
        # preferring conventional, then dr2net, then checkpoint)
        "mode": "dr2net",
        # Coefficient schedules: start and end values of alpha and beta (CoefficientSchedule).
        # The recipe of configs/study: alpha + beta = 1 all along, ending at alpha 0.1, beta 0.9 (reversible with
        # an error growth of 1/beta = 1.11 per unit; at alpha 0 the two streams decouple and the pretrained function
        # suffers most); the study's ablation compares it with the end alpha 0, beta 1 and with the reference's
        # alpha 1 -> 0, beta 0.1 -> 1, output last.
        "alpha": [0.9, 0.1],
        "beta": [0.1, 0.9],
        # linear | cosine | step (the reference's alternating every-2-epochs steps)
        "shape": "linear",
        "start_epoch": 0,
        "end_epoch": 20,
        # Update the coefficients every step (fractional epochs) or once per epoch.
        "per_step": True,
        # Dr2Stack output: "last" (x_N), "mean" ((x_{N-1}+x_N)/2, the reference implementation) or
        # "sum" (x_N + beta*(x_{N-1} - x_0): the residual stream when alpha + beta = 1). All but "mean"
        # are exact at alpha=1, beta=0.
        "output": "sum",
        # Where the scaled identity sits: "block" (G(x) = block(x) - (1-alpha)*x, the whole pretrained
        # block as the residual unit) or "branch" (inside each residual branch, as the reference).
        "residual": "block",
        # How each unit's residual update enters the stream: "plain" (G(x) = alpha*x + F(x)) or "balanced"
        # (alpha*x + (1+beta)*F(x), output "sum" then (x_N + beta*x_{N-1})/(1+beta)): every unit reads, on
        # average, the full weight of the earlier updates, as in the pretrained network. Both are exact at
        # alpha=1, beta=0 and reversible (pointdr2.reversible.stack.output_weights). Balanced finetuned worse in
        # the measurements of 2026-12-07 (README), so plain is the default.
        "gain": "plain",
        # Backprop mode of the stacks in dr2net finetuning: auto | reversible | exact (plain autograd
        # through the same surrogate: the control for the reconstruction's gradient error).
        "backprop": "auto",
        # Anchor spacing for reversible mode (null = the whole stack); auto mode chooses its own.
        "cache_every": None,
        # Precision guard: target relative reconstruction error for auto mode.
        "tolerance": 1.0e-4,
        # Recompute the tokenizer / downsampling layers in the backward pass (dr2net, checkpoint).
        "recompute_stem": True,
    },
    "train": {
        "epochs": 300,
        # the global batch; "auto" (with train.memory_budget): the largest that fits the budget
        "batch_size": 32,
        # memory per process for training, e.g. "12GB" (10^9 bytes), "11.5GiB" (2^30), "512MiB", or bytes; null:
        # no budget. The trainer measures what each mode needs (pointdr2.engine.plan) and fits the micro-batch
        # (gradient accumulation keeps train.batch_size), the mode (finetune.mode: auto) and the guard's spacing.
        "memory_budget": None,
        "lr": 5.0e-4,
        "min_lr": 1.0e-6,
        "weight_decay": 0.05,
        "warmup_epochs": 10,
        "optimizer": "adamw",
        "betas": [0.9, 0.999],
        "label_smoothing": 0.0,
        # cross_entropy | poly1_focal (openpoints' Poly1FocalLoss, PointNeXt's ShapeNetPart recipe: a sigmoid focal
        # loss over one-hot targets plus focal_epsilon * (1 - p_t)^(focal_gamma + 1), mean over points and classes)
        "loss": "cross_entropy",
        "focal_epsilon": 1.0,
        "focal_alpha": 0.25,
        "focal_gamma": 2.0,
        # cosine (linear warm-up, then cosine to min_lr) | multistep (lr x decay_rate at each of decay_epochs)
        "scheduler": "cosine",
        # cosine: the epoch at which it reaches min_lr and stays (Point-MAE's part segmentation: 100 of 300);
        # null: train.epochs
        "cosine_epochs": None,
        "decay_epochs": None,  # multistep: e.g. [210, 270] (PointNeXt's ShapeNetPart recipe)
        "decay_rate": 0.1,
        "grad_clip": 10.0,
        "accumulate": 1,
        # none | bf16 | fp16
        "amp": "none",
        "seed": 0,
        "num_workers": 4,
        # Model selection: "val" (the best epoch on a split carved from the training data), "last" (no
        # selection: the final weights; the carved split is still evaluated, for the curve) or "test" (as the
        # papers did: selection on test data, optimistically biased).
        "select_on": "val",
        "val_fraction": 0.1,
        "val_every": 1,
        "device": "auto",
        "deterministic": False,
        # With select_on=val or last: evaluate best.pth once on the test split when training ends.
        "test_at_end": True,
        # Convert BatchNorm to SyncBatchNorm in multi-process training.
        "sync_bn": False,
    },
    "eval": {
        "batch_size": 32,
        "vote": 1,
    },
    "run": {
        "dir": "runs/default",
        "log_every": 10,
        "tensorboard": True,
        "progress": True,
    },
}


class Config(dict):
    """A dict with attribute access; nested dicts are Configs too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in list(self.items()):
            if isinstance(value, Mapping) and not isinstance(value, Config):
                dict.__setitem__(self, key, Config(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; known: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, Config):
            value = Config(value)
        super().__setitem__(key, value)

    def __deepcopy__(self, memo: dict) -> Config:
        return Config({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def to_dict(self) -> dict:
        """A plain-dict deep copy (for YAML dumps and checkpoints)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def get_path(self, dotted: str, default: Any = None) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, Mapping):
            keys.extend(_flat_keys(value, path + "."))
    return keys


def _unknown_key_error(key: str, known_tree: Mapping, where: str) -> ConfigError:
    known = _flat_keys(known_tree)
    close = closest(key, known)
    if not close:
        # Fall back to the siblings of the closest existing parent.
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        close = [k for k in known if parent and k.startswith(parent + ".") and k.count(".") == key.count(".")]
        close = close[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known sections: {', '.join(known_tree)}"
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def _merge(base: dict, update: Mapping, *, where: str, prefix: str = "") -> dict:
    """Deep-merge ``update`` into ``base`` (in place) and return it. Keys are checked elsewhere."""
    for key, value in update.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r} in {where}")
        path = f"{prefix}{key}"
        if key in base and isinstance(base[key], Mapping) and isinstance(value, Mapping):
            _merge(base[key], value, where=where, prefix=path + ".")
        elif key in base and isinstance(base[key], Mapping) and base[key] and value is not None:
            raise ConfigError(f"config key {path!r} in {where} is a section; expected a mapping, got {value!r}")
        else:
            base[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)
    return base


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_file(path: Path, stack: tuple[Path, ...]) -> dict:
    """The file's tree with its bases merged in (without DEFAULTS), unchecked."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"circular _base_ inheritance: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise ConfigError(f"_base_ file {base!r} named in {path} not found (looked for {base_path})")
        _merge(merged, _resolve_file(base_path, (*stack, path)), where=str(base_path))
    return _merge(merged, data, where=str(path))


def _check_known(tree: Mapping, known: Mapping, where: str, prefix: str = "") -> None:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if path.split(".")[0] in OPEN_SECTIONS:
            continue
        if key not in known:
            raise _unknown_key_error(path, DEFAULTS, where)
        if isinstance(value, Mapping) and isinstance(known[key], Mapping) and known[key]:
            _check_known(value, known[key], where, path + ".")


def parse_override(text: str) -> tuple[str, Any, bool]:
    """Split ``key=value`` (or ``+key=value``) into (key, YAML-parsed value, is_new)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    is_new = key.startswith("+")
    key = key.lstrip("+")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; expected a dotted path like train.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() not in ("", ".") else value
        except ValueError:
            pass
    return key, value, is_new


def _set_dotted(tree: dict, key: str, value: Any, *, is_new: bool) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if part not in node:
            if not (is_new or parts[0] in OPEN_SECTIONS):
                raise _unknown_key_error(key, tree, "overrides")
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(f"override {key!r}: {here!r} is a value ({node[part]!r}), not a section")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node and not (is_new or parts[0] in OPEN_SECTIONS):
        raise _unknown_key_error(key, tree, "overrides (write +key=value to add a new key)")
    if isinstance(node.get(leaf), dict) and node[leaf] and not isinstance(value, dict):
        raise ConfigError(f"override {key!r} names a section; set one of its keys instead: "
                          f"{', '.join(key + '.' + k for k in node[leaf])}")
    node[leaf] = value


def _check_key_names(tree: Mapping, prefix: str = "") -> None:
    """No key may be named like an attribute of :class:`Config` (a dict): ``cfg.finetune.update`` would return
    the dict's ``update`` method instead of the value, silently."""
    for key, value in tree.items():
        if isinstance(key, str) and hasattr(Config, key):
            raise ConfigError(f"{prefix}{key}: the key's name is taken by the config object's own attribute {key!r} "
                              "(cfg...." + key + " would not return its value); rename the key")
        if isinstance(value, Mapping):
            _check_key_names(value, f"{prefix}{key}.")


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (or only the defaults when ``path`` is None) and apply ``overrides``.

    Raises ``ConfigError`` (a ``ValueError``) with a one-line message for a missing file, invalid
    YAML, a circular or missing ``_base_``, or an unknown key.
    """
    tree = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        file_tree = _resolve_file(path, ())
        _check_known(file_tree, DEFAULTS, str(path))
        _merge(tree, file_tree, where=str(path))
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        key, value, is_new = parse_override(text)
        _set_dotted(tree, key, value, is_new=is_new)
    _check_types(tree, DEFAULTS)
    _check_key_names(tree)
    cfg = Config(tree)
    # Where the config came from, kept off the tree so dumps and comparisons see only settings.
    object.__setattr__(cfg, "_source_path", None if path is None else str(path))
    return cfg


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Keys whose value must be positive (the consumers would fail later with a message that names no key).
POSITIVE = ("train.epochs", "train.batch_size", "train.lr", "train.accumulate", "eval.batch_size",
            "finetune.tolerance", "train.val_every", "run.log_every", "eval.vote")
# Keys that count things: whole numbers (2.0 is taken as 2; 2.5 is refused).
INTEGERS = ("train.epochs", "train.batch_size", "train.accumulate", "train.seed", "train.num_workers",
            "train.val_every", "eval.batch_size", "eval.vote", "run.log_every")
# Keys whose value may not be negative, and keys with an interval: (low, high, closed at high).
NON_NEGATIVE = ("train.min_lr", "train.weight_decay", "train.warmup_epochs", "train.grad_clip", "train.num_workers",
                "train.focal_epsilon", "train.focal_gamma",
                "finetune.start_epoch", "finetune.end_epoch")
INTERVALS = {"train.label_smoothing": (0.0, 1.0, False), "train.val_fraction": (0.0, 1.0, False),
             "train.focal_alpha": (0.0, 1.0, True), "train.decay_rate": (0.0, 1.0, True)}
# Keys with a fixed set of values (their consumers accept exactly these).
CHOICES: dict[str, tuple[str, ...]] = {
    "finetune.mode": ("dr2net", "conventional", "checkpoint", "auto"),
    "finetune.shape": ("linear", "cosine", "step"),
    "finetune.output": ("last", "mean", "sum"),
    "finetune.residual": ("block", "branch"),
    "finetune.gain": ("plain", "balanced"),
    "finetune.backprop": ("auto", "reversible", "exact"),
    "train.optimizer": ("adamw", "sgd"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.select_on": ("val", "last", "test"),
    "train.loss": ("cross_entropy", "poly1_focal"),
    "train.scheduler": ("cosine", "multistep"),
}


def _check_value(full: str, value: Any) -> None:
    """The range or choice rules of one key (its kind already checked)."""
    if full in CHOICES and value not in CHOICES[full]:
        raise ConfigError(f"{full}: expected one of {', '.join(CHOICES[full])}, got {value!r}"
                          + did_you_mean(str(value), CHOICES[full]))
    if not _is_number(value):
        return
    if full in INTEGERS and value != int(value):
        raise ConfigError(f"{full}: expected a whole number, got {value!r}")
    if full in POSITIVE and not value > 0:
        raise ConfigError(f"{full}: expected a positive number, got {value!r}")
    if full in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{full}: expected a number >= 0, got {value!r}")
    if full in INTERVALS:
        low, high, closed = INTERVALS[full]
        if not (low <= value <= high if closed else low <= value < high):
            raise ConfigError(f"{full}: expected a number in [{low:g}, {high:g}{']' if closed else ')'}, got {value!r}")


def _check_types(tree: Mapping, defaults: Mapping, prefix: str = "") -> None:
    """Every engine key's value has its default's kind (number, bool, text, list of numbers, section).

    One-line ``ConfigError`` naming the full key, e.g. ``train.lr: expected a number, got 'abc' (str)``, and the
    key's range or choices (:data:`POSITIVE`, :data:`INTEGERS`, :data:`NON_NEGATIVE`, :data:`INTERVALS`,
    :data:`CHOICES`): ``finetune.shape: expected one of linear, cosine, step, got 'zigzag'``.
    Keys whose default is None, and the open sections (dataset, model), are checked by their consumers.
    A number given for a text key is replaced in ``tree`` by its text (``run.dir=2024``).
    """
    for key, default in defaults.items():
        full = f"{prefix}{key}"
        if full == "train.memory_budget" and tree.get(key) is not None:
            parse_size(tree[key], full)  # raises ConfigError naming the key
            continue
        if full in OPEN_SECTIONS or key not in tree or default is None:
            continue
        value = tree[key]
        if full == "train.batch_size" and value == "auto":
            continue  # the trainer fits it to train.memory_budget (and says so when there is none)
        if isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}: expected a section (a mapping of keys), got {value!r}")
            _check_types(value, default, f"{full}.")
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif _is_number(default):
            ok, kind = _is_number(value), "a number"
        elif isinstance(default, str):
            if _is_number(value):  # run.dir=2024 is a name, not a number
                tree[key] = value = str(value)
            ok, kind = isinstance(value, str), "text"
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(map(_is_number, value))
            kind = f"a list of {len(default)} numbers"
        else:  # pragma: no cover - every default is one of the kinds above
            continue
        if not ok:
            raise ConfigError(f"{full}: expected {kind}, got {value!r} ({type(value).__name__})")
        _check_value(full, value)
        if full in INTEGERS and _is_number(value):
            tree[key] = int(value)


_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
               "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(value: Any, what: str = "size") -> int:
    """Bytes of a memory size: an int (bytes) or text ``"12GB"`` (10^9), ``"11.5GiB"`` (2^30), ``"512MiB"``,
    ``"800MB"``, ``"16G"`` (a bare K/M/G/T is binary, as ``nvidia-smi`` and ``free -h`` print sizes).

    ``what`` names the key or option in the one-line ``ConfigError`` for anything else (``"12XB"``, ``-1``).
    """
    import re

    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a memory size like 12GB, 11.5GiB or 512MiB, got {value!r}")
    if _is_number(value):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{what}: expected a memory size like 12GB, 11.5GiB or 512MiB (units B, KB, MB, GB, TB "
                              f"= powers of 1000; KiB, MiB, GiB, TiB or K, M, G, T = powers of 1024), got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * _SIZE_UNITS[unit])
    if not size > 0:
        raise ConfigError(f"{what}: expected a positive memory size, got {value!r}")
    return size


def dump_config(cfg: Mapping, path: str | os.PathLike | None = None) -> str:
    """The resolved config as YAML (written to ``path`` when given)."""
    plain = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def carved_fraction(train: Any) -> float:
    """The validation fraction carved from the training data: ``train.val_fraction`` unless
    ``train.select_on`` is ``test`` (no carve)."""
    return 0.0 if train.select_on == "test" else float(train.val_fraction)


def find_config(name: str | os.PathLike) -> Path:
    """Resolve a config path: as given, else relative to the shipped configs (``pointdr2/configs``, package
    data: a wheel or ``pip install .`` carries them; the checkout's ``configs`` is a link to the same folder)."""
    candidates = [Path(name)]
    shipped = Path(__file__).resolve().parent / "configs"
    candidates += [shipped / name, shipped / f"{name}.yaml"]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ConfigError(f"config file not found: {name} (also looked in {shipped})")
