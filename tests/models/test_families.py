"""Model families register on import; a broken family fails the import instead of going missing."""

from __future__ import annotations

import subprocess
import sys

from pointdr2.models import MODELS


def test_every_family_is_registered():
    assert {"pointbert", "pointmae", "pointnext"} <= set(MODELS)


def test_a_broken_family_is_an_import_error_not_a_missing_model():
    code = """
import importlib.abc, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pointdr2.models.pointnext":
            raise ImportError("simulated breakage in pointnext")
        return None
sys.meta_path.insert(0, Broken())
try:
    import pointdr2.models
except ImportError as exc:
    print("raised:", exc)
else:
    print("imported; pointnext registered:", "pointnext" in pointdr2.models.MODELS)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "raised: simulated breakage in pointnext", out
