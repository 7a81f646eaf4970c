"""The API reference builds (`make docs` runs the same pdoc command) without a warning, and it
documents every public name."""

import re
import subprocess
import sys
from pathlib import Path

import netshrink

ROOT = Path(__file__).resolve().parent.parent


def api_modules() -> list[str]:
    """The modules `make docs` documents, read from the Makefile (one list, not two)."""
    line = re.search(r"^API_MODULES := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    return line.group(1).split()


def test_make_docs_builds_the_reference_without_warnings(tmp_path):
    command = [sys.executable, "-m", "pdoc", *api_modules(), "-o", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Warn" not in done.stderr, done.stderr
    page = (tmp_path / "netshrink.html").read_text()
    for name in netshrink.__all__:
        assert f'id="{name}"' in page, name
    assert (tmp_path / "netshrink" / "export" / "onnx.html").is_file()
