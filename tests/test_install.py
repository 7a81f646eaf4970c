"""Installing netshrink keeps what the user has: pip, asked to install the package into this
environment (which holds torch already), would install netshrink alone, never another torch."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_installing_keeps_the_users_torch(tmp_path):
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
               str(report), "-e", str(ROOT)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    planned = {i["metadata"]["name"].lower(): i["metadata"]["version"]
               for i in json.loads(report.read_text())["install"]}  # fmt: skip
    assert "torch" not in planned, f"pip would replace torch {torch.__version__}: {planned}"
    assert "netshrink" in planned
