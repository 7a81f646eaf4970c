"""The README's Python section runs as written (digits: a few seconds)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # it writes lenet.nsk
    exec(compile(blocks[0], "README.md", "exec"), {})  # the repository's own README
    printed = capsys.readouterr().out
    top1, size = re.search(r"top-1 ([\d.]+)%.*?([\d,]+) bytes", printed).groups()
    assert float(top1) > 90  # digits: the dense model is at ~97%
    assert int(size.replace(",", "")) == (tmp_path / "lenet.nsk").stat().st_size


def test_the_readme_own_data_section_runs(capsys):
    exec(compile(python_blocks()[1], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    float_top1, fixed_top1 = (float(v) for v in re.findall(r"([\d.]+)%", printed))
    assert float_top1 > 90 and fixed_top1 > float_top1 - 2  # digits: ~95%
