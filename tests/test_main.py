"""The ``pointdr2`` entry point: info output, bad arguments, exit codes."""

import os
import subprocess
import sys

import numpy
import torch

import pointdr2
from pointdr2 import ops
from pointdr2.cli import main


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(pointdr2.__file__))))
    return subprocess.run([sys.executable, "-m", "pointdr2", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_info_reports_versions_devices_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"pointdr2     {pointdr2.__version__}" in out
    assert f"torch        {torch.__version__}" in out
    assert f"numpy        {numpy.__version__}" in out
    assert "open3d" in out and "cuda" in out
    for name in ops.available_backends():
        assert name in out.split("op backends", 1)[1].splitlines()[0]
    assert f"auto on cpu  {ops.auto_backend('cpu', torch.float32)}" in out


def test_module_entry_point_and_bad_arguments():
    ok = run_cli("--version")
    assert ok.returncode == 0 and pointdr2.__version__ in ok.stdout
    bad = run_cli("no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = run_cli("bench")
    assert missing.returncode == 2 and "WHAT" in missing.stderr


def test_parser_and_version_import_no_torch():
    """--help, --version and argument errors answer before torch is imported (well under a second)."""
    import subprocess
    import sys

    code = ("import sys; import pointdr2.cli as c\n"
            "for argv in (['train'], ['eval'], ['prepare'], ['demo'], ['info'], ['visualize']):\n"
            "    c.build_parser(argv)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    version = subprocess.run([sys.executable, "-m", "pointdr2", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("pointdr2 ")


def test_layers_below_the_command_line_import_no_viz_and_no_commands():
    """The engine, data, study and benchmark modules import neither pointdr2.viz (an optional extra's
    front end) nor the command layer; only pointdr2.commands knows argparse, printing and exit codes."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import pointdr2.engine, pointdr2.engine.inference, pointdr2.engine.plan, pointdr2.data, pointdr2.study\n"
            "import pointdr2.study.demo, pointdr2.bench.memory, pointdr2.bench.ops, pointdr2.bench.plan\n"
            "import pointdr2.bench.precision, pointdr2.data.bench\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pointdr2.viz', 'pointdr2.commands', 'pointdr2.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
