"""The benchmarks' derived tables: verdicts and README rows computed from measured rows."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import beyond  # noqa: E402
import peers_fronts  # noqa: E402
import peers_tables  # noqa: E402
import readme  # noqa: E402
from common import replace_block  # noqa: E402
from netshrink.stage import with_seed  # noqa: E402


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


def test_a_front_keeps_only_the_points_no_other_beats_on_size_and_loss():
    P = peers_fronts.Point
    found = [P(0.0, 1000, "a"), P(0.5, 400, "b"), P(0.3, 500, "c"), P(0.6, 450, "dominated"),
             P(1.0, 100, "d"), P(0.3, 800, "worse twin")]  # fmt: skip
    assert [p.label for p in peers_fronts.pareto(found)] == ["a", "c", "b", "d"]


def test_a_front_is_read_in_log_size_between_points_and_only_bounded_outside_them():
    P = peers_fronts.Point
    front = [P(0.0, 1000, "a"), P(1.0, 10, "b")]
    middle = peers_fronts.size_at(front, 0.5)
    assert middle.relation == "=" and middle.size == pytest.approx(100)  # geometric, not 505
    assert peers_fronts.size_at(front, 1.0) == peers_fronts.Reading(10, "=")
    assert peers_fronts.size_at(front, 2.0) == peers_fronts.Reading(10, "<=")  # never extrapolated
    assert peers_fronts.size_at(front, -0.5) == peers_fronts.Reading(1000, ">=")
    assert peers_fronts.size_at([], 0.5) is None


def test_equal_loss_chooses_netshrinks_file_on_validation_and_reads_the_best_peer_there():
    rows = [
        _row("peer", 0.0, 1000),
        _row("peer", 1.0, 10),
        _row("other", 0.0, 2000),
        _row("netshrink", 0.5, 20, **{"val loss pt": 0.4}),
        _row("netshrink", 0.45, 5, **{"val loss pt": 0.9}),  # smaller, but above 0.5 on val
        _row("netshrink", 0.0, 1, "ptq"),  # post-training rows are not chosen (no validation)
    ]
    (header, half, one), verdicts = peers_fronts.equal_loss_rows(rows)
    assert len(half) == len(header)
    assert half[2:] == ["netshrink size", "0.40", "0.50", "20", "peer: 100", "5.00x", "met"]
    assert one[5:] == ["5", "peer: 126", "25.18x", "met"]  # 10 ** (3 - 2 * 0.45) / 5
    assert "**met**" in verdicts[0]


@pytest.mark.parametrize(
    ("ratio", "relation", "verdict"),
    [(3.5, "=", "met"), (2.0, "=", "missed"), (3.5, ">=", "met"), (2.0, "<=", "missed"),
     (3.5, "<=", "undecided (beyond the peer's measured losses)")],
)  # fmt: skip
def test_the_goal_is_met_only_where_the_front_shows_it(ratio, relation, verdict):
    assert peers_fronts._verdict(ratio, relation) == verdict


def test_readme_size_rows_come_from_the_fronts():
    rows = [_row("peer", 0.0, 1000), _row("peer", 1.0, 10),
            _row("netshrink", 0.5, 20, **{"val loss pt": 0.4})]  # fmt: skip
    half, one = readme.size_rows(rows)
    assert half[1:] == ["<= 0.5 pt", "20 B, 0.50 pt", "peer: 100", "5.00x", "met"]
    assert one == ["M", "<= 1 pt", "20 B, 0.50 pt", "peer: 100", "5.00x", "met"]


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


def test_a_front_variant_scales_every_threshold_lowers_the_bits_and_drops_the_budgets():
    import peers_netshrink

    recipe, _ = peers_netshrink.recipe_for("lenet5_caffe")
    changed = peers_netshrink.variant(recipe, 1.25, -1)
    prune, share = changed.stages[0].config.prune, changed.stages[1].config
    before = recipe.stages[0].config.prune
    assert prune.threshold.ratio == pytest.approx(1.25 * before.threshold.ratio)
    assert prune.per_layer == pytest.approx({k: 1.25 * v for k, v in before.per_layer.items()})
    assert (share.conv_bits, share.fc_bits) == (
        recipe.stages[1].config.conv_bits - 1,
        recipe.stages[1].config.fc_bits - 1,
    )
    assert all(stage.budget is None for stage in changed.stages)
    assert any(stage.budget is not None for stage in recipe.stages)  # the recipe itself keeps them
    seeded = changed.model_copy(update={"seed": 5})  # as peers.py runs each seed
    assert with_seed(seeded.stages[0], 5).config.retrain.seed == 5
    assert with_seed(seeded.stages[1], 5).finetune.seed == 5


def test_beyond_runs_only_the_recipes_named_and_refuses_others():
    assert "soft-weight-sharing-lenet300" in beyond._stems("lenet300_100")
    with pytest.raises(SystemExit):  # argparse's error: not a recipe of the models given
        beyond.main(["--models", "vgg_small", "--recipes", "soft-weight-sharing-lenet300"])


def test_a_sweep_trains_the_earlier_stages_once_and_lifts_the_budgets(tmp_path, monkeypatch):
    import json

    import common
    import sweep
    from netshrink import pipeline
    from test_sweep import RECIPE as SWEPT

    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "DOC", tmp_path / "benchmarks.md")
    methods = []
    run_stage = pipeline.run_stage
    monkeypatch.setattr(
        pipeline,
        "run_stage",
        lambda model, stage, ctx: methods.append(stage.method) or run_stage(model, stage, ctx),
    )
    recipe = tmp_path / "swept.yaml"
    recipe.write_text(SWEPT)
    sweep.main([str(recipe), "--stage", "share", "--field", "finetune.lr",
                "--values", "0.001", "null", "--seeds", "0"])  # fmt: skip
    # the stage after `share` is cut; `prune` is trained once and both values start from it
    assert methods == ["prune_magnitude", "share_kmeans", "share_kmeans"]
    published = json.loads((tmp_path / "results" / "sweep.json").read_text())
    assert published["commit"] == common.SOURCE and published["commit"] != ""
    rows = published["rows"]
    assert [row["value"] for row in rows] == [0.001, "default"]
    assert [row["in recipe"] for row in rows] == [False, True]  # the recipe leaves lr unset
    for row in rows:  # a zero budget did not stop the run: the row says whether it held
        assert 50 < row["val top-1"] <= 100
        assert row["within budget"] == (row["val loss pt"] <= 0)
    assert all(row["bytes"] > 0 and row["measured after"] == "share" for row in rows)
    # a pruning setting judged after the sharing: the recipe's own value was just run, so
    # both stages resume and nothing trains again
    sweep.main([str(recipe), "--stage", "prune", "--field", "config.threshold.ratio",
                "--values", "1.0", "--until", "share", "--seeds", "0"])  # fmt: skip
    assert len(methods) == 3
    published = json.loads((tmp_path / "results" / "sweep.json").read_text())
    [judged] = [row for row in published["rows"] if row["stage"] == "prune"]
    assert judged["in recipe"] and judged["val top-1"] == rows[1]["val top-1"]
    for wrong in (["--stage", "nope"], ["--stage", "share", "--until", "prune"]):
        with pytest.raises(SystemExit):  # no such stage; a stage before the swept one
            sweep.main([str(recipe), *wrong, "--field", "budget", "--values", "1"])
