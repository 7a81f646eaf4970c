"""The benchmarks' derived tables: verdicts and README rows computed from measured rows."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import peers_tables  # noqa: E402
import readme  # noqa: E402
from common import replace_block  # noqa: E402


def _row(tool, loss, smallest, kind="size", **extra):
    return {"model": "M", "tool": tool, "pipeline": f"{tool} {kind}", "kind": kind,
            "loss pt": loss, "smallest": smallest, "stored as": "file", "ratio": 1.0,
            "top-1": 0.9 - loss / 100, "file bytes": smallest, **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("ours", "verdict"),
    [((0.1, 100), "met"), ((0.3, 100), "met only within the bound"), ((0.1, 400), "missed")],
)
def test_goal_verdict_needs_three_times_smaller_at_no_more_loss(ours, verdict):
    peer = _row("peer", 0.2, 1000)
    assert peers_tables.goal_verdict(peer, _row("netshrink", *ours)) == verdict


def test_size_rows_pick_the_smallest_file_inside_each_bound():
    rows = [
        _row("peer", 0.2, 1000),
        _row("peer", 0.8, 500),  # inside 1 pt only
        _row("netshrink", 0.4, 300),
        _row("netshrink", 0.9, 100),  # inside 1 pt only
        _row("netshrink", 3.0, 10),  # outside both
    ]
    half, one = readme.size_rows(rows)
    assert half[1:5] == ["<= 0.5 pt", "300 (file), 0.40 pt", "peer: 1,000 (file), 0.20 pt", "3.33x"]
    assert half[5] == "met only within the bound"
    assert one[2:5] == ["100 (file), 0.90 pt", "peer: 500 (file), 0.80 pt", "5.00x"]


def test_filter_rows_take_the_most_macs_removed_within_one_point():
    rows = [
        _row("tp", 0.5, 10, "filters", **{"MACs removed": 0.5, "latency ratio @1": 1.5}),
        _row("tp", 1.5, 10, "filters", **{"MACs removed": 0.8, "latency ratio @1": 2.5}),
        _row("netshrink", 2.0, 10, "filters", **{"MACs removed": 0.5, "latency ratio @1": 1.4}),
    ]
    assert readme.filter_rows(rows) == [
        ["M", "tp", "50.0%", "0.50", "1.50x"],
        ["M", "netshrink", "none", "-", "-"],
    ]


def test_replace_block_swaps_only_the_named_block_and_appends_a_missing_one():
    text = "a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb\n"
    assert replace_block(text, "x", "new\n") == "a\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nb\n"
    appended = replace_block("a\n", "y", "new\n")
    assert appended == "a\n\n<!-- bench:y -->\nnew\n<!-- /bench:y -->\n"


def test_merge_published_keeps_the_parts_a_partial_rerun_did_not_make(tmp_path, monkeypatch):
    import json

    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    published = [{"part": "a", "v": 1}, {"part": "b", "v": 2}, {"part": "b", "v": 3},
                 {"part": "c", "v": 4, "made by": "`python bench/t.py --only c` (2026-01-01)"}]  # fmt: skip
    (tmp_path / "t.json").write_text(
        json.dumps({"command": "python bench/t.py", "date": "2026-01-02", "rows": published})
    )
    order = ["a", "b", "c"].index
    rows, sentence = common.merge_published(
        "t", [{"part": "b", "v": 9}], lambda r: r["part"], order
    )
    assert [r["v"] for r in rows] == [1, 9, 4]  # b's two old rows replaced by the new one
    assert sentence == (
        " The rows of a are from `python bench/t.py` (2026-01-02)."
        " The rows of c are from `python bench/t.py --only c` (2026-01-01)."  # kept over reruns
    )
    assert rows[0]["made by"] == "`python bench/t.py` (2026-01-02)" and "made by" not in rows[1]
    everything = [{"part": p, "v": 0} for p in "abc"]
    assert common.merge_published("t", everything, lambda r: r["part"], order) == (everything, "")
    assert common.merge_published("none", everything, lambda r: r["part"], order) == (
        everything,
        "",
    )


def test_the_readme_names_the_command_of_each_papers_row():
    result = {"command": "python bench/papers.py --cases kim", "date": "2026-01-02"}
    rows = [
        {"made by": "`python bench/papers.py` (2026-01-01)"},
        {},  # made by this result's own command
        {"made by": "`python bench/papers.py` (2026-01-01)"},
    ]
    assert readme._made_by(result, rows) == (
        "`python bench/papers.py` (2026-01-01); `python bench/papers.py --cases kim` (2026-01-02)"
    )
