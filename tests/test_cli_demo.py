"""pointdr2 demo --quick: every step of the embedded default on tiny sizes."""

import json

import matplotlib.image as mpimg
import numpy as np

from pointdr2.cli import main


def test_quick_demo_runs_every_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conventional" in text and "dr2net" in text and "activation MiB" in text and "step ms" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["finetune"]) == {"dr2net", "conventional"}
    for mode in ("dr2net", "conventional"):
        test = summary["finetune"][mode]["test"]
        assert 0.0 <= test["oa"] <= 100.0 and test["count"] == 30
        assert (out / f"finetune-{mode}" / "best.pth").is_file()
        assert (out / f"finetune-{mode}" / "metrics.jsonl").is_file()
    mem = summary["memory"]
    conv = mem["conventional"]["activation_bytes"]
    # Dr2Net at the end of the schedule keeps far less than conventional finetuning
    end = next(v for k, v in mem.items() if k.startswith("dr2net end"))
    assert 0 < end["activation_bytes"] < 0.5 * conv
    assert summary["activation_ratio_worst"] == max(v["activation_bytes"] for k, v in mem.items()
                                                    if k.startswith("dr2net")) / conv
    assert summary["meaning"] in text
    img = mpimg.imread(out / "predictions.png")[..., :3]
    assert img.size and (np.abs(img - 1.0).max(axis=-1) > 0.05).sum() > 50  # something besides background
    assert summary["rendered"]["rendered"] == 6
    # a second run refuses to overwrite the directory
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
