"""scripts/gpu_check.sh --dry-run: every command it runs parses and every test file it names collects;
a broken command or a missing test file fails the dry run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _dry_run(script: Path, cwd_root: Path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, env=env,
                          cwd=cwd_root, timeout=300, check=False)


def test_dry_run_checks_commands_and_tests(tmp_path):
    report = ROOT / "gpu_check_report.txt"
    existed = report.exists()
    proc = _dry_run(SCRIPT, ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "dry run ok: 2 test files, 4 commands" in proc.stdout
    assert proc.stdout.count("parses: pointdr2 ") == 4
    for name in ("bench ops", "bench memory --model pointmae --batch 32", "bench memory --model pointnext-xl",
                 "bench plan --device cuda"):
        assert f"parses: pointdr2 {name}" in proc.stdout
    assert report.exists() == existed  # the dry run writes no report

    # a copy of the checkout's layout with one bad option and one missing test file fails, naming both
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    broken = tmp_path / "scripts" / "gpu_check.sh"
    text = SCRIPT.read_text().replace("--auto start,end --steps 3", "--auto start,sometime --steps 3", 1)
    text = text.replace("tests/reversible/test_dr2_cuda.py)", "tests/reversible/test_dr2_cuda_gone.py)")
    broken.write_text(text)
    shutil.copymode(SCRIPT, broken)
    proc = _dry_run(broken, tmp_path)
    assert proc.returncode != 0
    assert "missing test file: tests/reversible/test_dr2_cuda_gone.py" in proc.stderr
    assert "does not parse: pointdr2 bench memory --model pointmae" in proc.stderr and "sometime" in proc.stderr
    assert not (tmp_path / "gpu_check_report.txt").exists()
