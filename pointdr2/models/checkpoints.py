"""Reading model weights from checkpoint files (official Point-BERT / Point-MAE / PointNeXt and ours).

``read_checkpoint`` is the one file reader of the project (``pointdr2.engine.checkpoint.load_checkpoint``
is the same function), so ``train``, ``eval``, ``visualize`` and ``load_pretrained`` share one loading
policy; ``extract_state_dict`` finds the state dict inside the layouts users have on disk and
strips ``module.`` prefixes; ``load_into`` maps it through the model's ``convert_state_dict``
protocol method, checks shapes and loads it non-strictly, returning a :class:`LoadReport`.

Layouts recognised (first match wins):

- ours: ``{"format": "pointdr2-checkpoint", "model": state_dict, "config": {...}, ...}``
- official finetuned / pretrain: ``{"base_model": state_dict, ...}``, ``{"model": state_dict, ...}`` or
  ``{"model_state_dict": state_dict, ...}`` (Point-MAE part segmentation)
- ``{"state_dict": state_dict}`` and a plain state dict (every value a tensor).

Loading policy. Files are unpickled with ``torch.load(weights_only=True)``, which builds only
tensors, containers, numbers and strings, plus the harmless NumPy globals released checkpoints
carry in their metadata (scalars such as a ``numpy.float64`` accuracy, dtypes, arrays:
``HARMLESS_GLOBALS``, allowed for the call only); no code from a downloaded file runs. A file that
needs anything else (e.g. an ``argparse.Namespace`` of training arguments, as several research
repos save) is refused with a one-line error naming the blocking global, unless the environment
variable ``POINTDR2_TRUST_CHECKPOINTS=1`` says its source is trusted: then it is fully unpickled,
with a warning.

A model may name its classification head with a ``head_prefix`` attribute (``cls_head_finetune.``
for the point transformer); a checkpoint whose head alone has other shapes (e.g. an official
Point-BERT ScanObjectNN checkpoint's 40-way head in a 15-class model) then loads with that head
left to be replaced (``LoadReport.replaced_head``), and :func:`checkpoint_num_classes` tells how
many classes the checkpoint's own head has.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["STATE_KEYS", "LoadReport", "read_checkpoint", "extract_state_dict", "strip_prefix", "load_into", "OWN_FORMAT",
           "TRUST_ENV", "HARMLESS_GLOBALS", "checkpoint_num_classes", "head_output_key"]

log = logging.getLogger(__name__)

OWN_FORMAT = "pointdr2-checkpoint"
TRUST_ENV = "POINTDR2_TRUST_CHECKPOINTS"
# where official layouts keep the state dict (Point-MAE's part segmentation saves "model_state_dict")
STATE_KEYS = _STATE_KEYS = ("base_model", "model", "model_state_dict", "state_dict")


def _harmless_globals() -> list:
    """NumPy scalar, dtype and array reconstruction globals: they build plain values and run nothing.

    Pickles name the scalar/array builders by module path, which NumPy 2 moved from ``numpy.core``
    to ``numpy._core``; both spellings are allowed so checkpoints written under either load.
    """
    try:
        multiarray = np._core.multiarray  # NumPy >= 2
    except AttributeError:  # pragma: no cover - NumPy 1.x
        multiarray = np.core.multiarray
    out: list = [np.dtype, np.ndarray]
    for fn in (multiarray.scalar, multiarray._reconstruct):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out.append((fn, f"{module}.{fn.__name__}"))
    # NumPy >= 1.25 pickles a dtype through its class (numpy.dtypes.Float64DType, ...); object
    # dtypes stay out (they exist to hold arbitrary Python objects).
    dtypes = getattr(np, "dtypes", None)
    for name in sorted(dir(dtypes) if dtypes is not None else ()):
        cls = getattr(dtypes, name)
        if name.endswith("DType") and isinstance(cls, type) and name != "ObjectDType":
            out.append(cls)
    return out


HARMLESS_GLOBALS: list = _harmless_globals()


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


_HARMLESS_NAMES = frozenset(_global_name(g) for g in HARMLESS_GLOBALS)


@dataclass
class LoadReport:
    """What ``load_pretrained`` did. Key lists use this model's parameter names."""

    path: str
    layout: str  # "pointdr2" | "base_model" | "model" | "state_dict" | "plain"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    # Head keys of the checkpoint not loaded because its head has other shapes (another label set):
    # the model's head stays at its initialisation, to be trained (finetuning).
    replaced_head: list[str] = field(default_factory=list)
    checkpoint_classes: int | None = None  # outputs of the checkpoint's head, when it has one
    head_mismatch: str | None = None  # the first head key whose shape differs, with both shapes

    @property
    def unexpected_missing(self) -> list[str]:
        """Missing keys that the checkpoint kind does not explain (worth a warning)."""
        expected = set(self.expected_missing)
        return [k for k in self.missing if k not in expected]

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors from {self.path} ({self.layout}); "
                f"missing {len(self.missing)} ({len(self.missing) - len(self.unexpected_missing)} expected), "
                f"unexpected {len(self.unexpected)}")


def trusted() -> bool:
    """Whether ``POINTDR2_TRUST_CHECKPOINTS`` allows full unpickling (``1``, ``true`` or ``yes``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _blocking_globals(path: Path, exc: Exception) -> list[str]:
    """The globals (``module.Name``) a ``weights_only`` load refused, harmless ones left out."""
    names: list[str] = []
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                 if n not in _HARMLESS_NAMES]
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: fall back to the error message
        names = []
    if not names:
        text = str(exc)
        names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", text)
        names += [n for n in re.findall(r"but got <class '([\w.]+)'>", text) if n not in names]
    return names


def diagnose_file(path: str | os.PathLike) -> str:
    """What is wrong with a file that does not load: empty, truncated zip, not a zip or pickle, ..."""
    import zipfile

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except zipfile.BadZipFile:
            return f"a truncated or damaged zip archive ({size} bytes; torch.save writes zip archives)"
        return f"a zip archive with a damaged member ({bad})" if bad else "a zip archive that is not a torch.save file"
    if head[:1] == b"\x80":
        return "a legacy pickle that does not unpickle (truncated?)"
    return f"not a PyTorch file (it starts with {head!r})"


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load`` a checkpoint file (onto the CPU by default) under the loading policy above.

    Returns the top-level dict. Raises FileNotFoundError, or a one-line ValueError: not a PyTorch
    checkpoint, not a dict, or (without ``POINTDR2_TRUST_CHECKPOINTS=1``) needs full unpickling,
    naming the global that blocked it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(HARMLESS_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = _blocking_globals(path, exc)
        if not blocked and "add_safe_globals" not in str(exc):
            # e.g. "Unsupported operand": a corrupt or foreign file, not an object the policy refuses
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({_weights_only_reason(exc)})") from None
        what = ", ".join(blocked[:4]) + (" ..." if len(blocked) > 4 else "") if blocked else "a non-tensor object"
        if not trusted():
            raise ValueError(f"{path} needs full unpickling to load: it holds {what}, which a weights-only load "
                             f"refuses (unpickling it can run code); set {TRUST_ENV}=1 if you trust its source"
                             ) from None
        log.warning("loading %s with full unpickling (%s=1; it holds %s)", path, TRUST_ENV, what)
        try:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - e.g. the class's module is not installed here
            raise ValueError(f"{path} could not be unpickled even with {TRUST_ENV}=1 "
                             f"({type(exc2).__name__}: {_first_line(exc2)})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means the file is not a checkpoint
        log.debug("%s: %s", path, _first_line(exc))
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {diagnose_file(path)}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict or a state dict")
    return dict(obj)


def _weights_only_reason(exc: BaseException) -> str:
    """The weights-only unpickler's own reason (its message opens with generic advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        reason = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        if reason:
            return reason[0][:160]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove leading ``prefix`` (repeatedly, e.g. nested DataParallel) from every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out


def extract_state_dict(obj: Mapping, path: str | os.PathLike = "<checkpoint>") -> tuple[dict[str, torch.Tensor], str]:
    """-> (state dict with ``module.`` stripped, layout name). ValueError when none is found."""
    if obj.get("format") == OWN_FORMAT:
        sd, layout = obj.get("model"), "pointdr2"
    else:
        layout = next((k for k in _STATE_KEYS if isinstance(obj.get(k), Mapping)), "plain")
        sd = obj if layout == "plain" else obj[layout]
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{path} holds no model state dict (looked for keys {', '.join(_STATE_KEYS)} or a "
                         f"plain state dict); top-level keys: {', '.join(map(str, list(obj)[:8]))}")
    bad = next((k for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} of the {layout} state dict is not a tensor; not a model checkpoint")
    return strip_prefix(sd), layout


def head_output_key(model: nn.Module) -> str | None:
    """The weight of the model's last head layer (its rows are the classes), from ``model.head_prefix``."""
    prefix = getattr(model, "head_prefix", None)
    if not prefix:
        return None
    keys = [k for k in model.state_dict() if k.startswith(prefix) and k.endswith(".weight")]
    return keys[-1] if keys else None


def _converted(model: nn.Module, obj: Mapping, path: str | os.PathLike) -> tuple[dict, str, list[str]]:
    sd, layout = extract_state_dict(obj, path)
    expected_missing: list[str] = []
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        sd, expected_missing = convert(sd)
    return sd, layout, list(expected_missing)


def checkpoint_num_classes(model: nn.Module, checkpoint: Mapping, path: str | os.PathLike = "<checkpoint>"
                           ) -> int | None:
    """How many classes the head in ``checkpoint`` (a dict from :func:`read_checkpoint`) predicts,
    read in ``model``'s key names; ``None`` when it holds no head (a pretrain checkpoint)."""
    sd, _, _ = _converted(model, checkpoint, path)
    key = head_output_key(model)
    if key is None or key not in sd or sd[key].ndim < 1:
        return None
    return int(sd[key].shape[0])


def load_into(model: nn.Module, path: str | os.PathLike, *, checkpoint: Mapping | None = None) -> LoadReport:
    """Load the weights in ``path`` into ``model`` (non-strict) and report what happened.

    The state dict goes through ``model.convert_state_dict`` when the model has it. When only the
    head (``model.head_prefix``) has other shapes, the checkpoint was trained on another label set:
    its whole head is left out and reported as a head to replace (``replaced_head``; the model's head
    keys become expected-missing). Raises ValueError naming the first other key whose shape differs,
    or the file when it holds no tensor this model knows (a checkpoint of another model family).
    ``checkpoint``: the dict already read from ``path`` (not read again).
    """
    obj = read_checkpoint(path) if checkpoint is None else checkpoint
    sd, layout, expected_missing = _converted(model, obj, path)
    own = model.state_dict()
    known = [k for k in sd if k in own]
    if not known:
        family = getattr(model, "family", type(model).__name__)
        raise ValueError(f"{path} holds no weights of a {family} model (first key {next(iter(sd), None)!r}); "
                         "is it a checkpoint of another model family?")
    prefix = getattr(model, "head_prefix", None) or None
    mismatched = [k for k in known if tuple(sd[k].shape) != tuple(own[k].shape)]
    body = [k for k in mismatched if prefix is None or not k.startswith(prefix)]
    if body:
        key = body[0]
        raise ValueError(f"{path}: shape mismatch for {key!r}: checkpoint {list(sd[key].shape)}, "
                         f"model {list(own[key].shape)} (different model size or family?)")
    replaced: list[str] = []
    ckpt_classes = None
    out_key = head_output_key(model)
    if out_key is not None and out_key in sd and sd[out_key].ndim >= 1:
        ckpt_classes = int(sd[out_key].shape[0])
    head_mismatch = None
    if mismatched:
        key = mismatched[0]
        head_mismatch = f"{key!r}: checkpoint {list(sd[key].shape)}, model {list(own[key].shape)}"
        replaced = [k for k in known if k.startswith(prefix)]
        known = [k for k in known if not k.startswith(prefix)]
        expected_missing += [k for k in own if k.startswith(prefix) and k not in expected_missing]
        classes = getattr(model, "num_classes", None)
        log.info("%s: its head (%s, %s outputs) does not fit this model's (%s classes): the head is replaced and "
                 "trained from its initialisation", path, prefix + "*", ckpt_classes if ckpt_classes else "other",
                 classes if classes is not None else "other")
    result = model.load_state_dict({k: sd[k] for k in known}, strict=False)
    report = LoadReport(path=str(path), layout=layout, loaded=known, missing=list(result.missing_keys),
                        unexpected=[k for k in sd if k not in own], expected_missing=list(expected_missing),
                        replaced_head=replaced, checkpoint_classes=ckpt_classes, head_mismatch=head_mismatch)
    log.info(report.summary())
    if report.unexpected_missing:
        log.warning("missing from %s (not expected for this checkpoint kind): %s", path,
                    ", ".join(report.unexpected_missing))
    expected_here = [k for k in report.missing if k in set(report.expected_missing)]
    if expected_here:
        heads = sorted({k.split(".")[0] for k in expected_here})
        log.info("new %s: %d tensors not in the checkpoint, as expected (trained from their initialisation)",
                 ", ".join(heads), len(expected_here))
        log.debug("not in the checkpoint (expected): %s", ", ".join(expected_here))
    if report.unexpected:
        log.warning("ignored %d tensors of %s this model does not have: %s", len(report.unexpected), path,
                    ", ".join(report.unexpected[:10]) + (" ..." if len(report.unexpected) > 10 else ""))
    return report
