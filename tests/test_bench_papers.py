"""bench/papers.py's recipe rows: with a runs folder, each seed's run (and the run without a
dropped stage) is kept and resumed, so a later call with one more seed trains only that seed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import papers  # noqa: E402
from netshrink.recipe import parse_recipe  # noqa: E402

RECIPE = """\
name: tiny-paper
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 2, lr: 0.05, batch_size: 64}
stages:
  - method: prune_magnitude
    name: prune
    config: {threshold: {kind: std, ratio: 1.0}}
  - method: share_kmeans
    name: group
    config: {bits: 3}
  - method: quantize
    name: fixed
    config: {weights: 8, activations: 8}
"""


def test_a_kept_run_is_resumed_and_a_new_seed_runs_alone(tmp_path, monkeypatch):
    from netshrink import pipeline

    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(papers.WITHOUT, "tiny-paper", ("group",))
    methods = []
    run_stage = pipeline.run_stage
    monkeypatch.setattr(pipeline, "run_stage",
                        lambda model, stage, ctx: methods.append(stage.method)
                        or run_stage(model, stage, ctx))  # fmt: skip
    recipe, runs = parse_recipe(RECIPE), tmp_path / "runs"
    first = papers.recipe_rows("case", recipe, RECIPE, (0,), runs)
    assert [row["stage"] for row in first][-2:] == [
        "fixed (quantize), without group",
        "packed (pack), without group",
    ]
    # the run without the group stage started from the first run's prune stage
    assert methods == ["prune_magnitude", "share_kmeans", "quantize", "quantize"]
    seed = runs / "tiny-paper" / "seed-0"
    prune = Path("stages") / "01-prune.safetensors"
    assert (seed / "without-group" / prune).stat().st_ino == (seed / "run" / prune).stat().st_ino

    methods.clear()
    both = papers.recipe_rows("case", recipe, RECIPE, (0, 1), runs)
    assert methods == ["prune_magnitude", "share_kmeans", "quantize", "quantize"]  # seed 1 only
    assert [row["top-1 per seed"][0] for row in both] == [row["top-1"] for row in first]
