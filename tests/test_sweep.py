"""`netshrink sweep`: a recipe's setting chosen on validation. The stages before the swept one
train once a seed, the stage after the measured one is not run, a wrong stage or value is one
line and exit 2."""

import json

import pytest

from netshrink.cli import main
from netshrink.errors import ConfigError
from netshrink.recipe import parse_recipe
from netshrink.sweep import Sweep

RECIPE = """\
name: swept
data: {source: digits}
baseline:
  model: lenet300_100
  train: {epochs: 2, lr: 0.05, batch_size: 64}
stages:
  - method: prune_magnitude
    name: prune
    config: {threshold: {kind: std, ratio: 1.0}}
    finetune: {epochs: 1}
    budget: 0.0
  - method: share_kmeans
    name: share
    config: {bits: 3}
    finetune: {epochs: 1}
    budget: 0.0
  - method: quantize
    config: {weights: 8, activations: 8}
export: {c: true}
"""


def test_the_swept_recipe_is_cut_after_the_measured_stage_with_the_field_set():
    sweep = Sweep(parse_recipe(RECIPE), "prune", "config.threshold.ratio", until="share")
    recipe = sweep.recipe_for(1.5, seed=7)
    assert [s.title for s in recipe.stages] == ["prune", "share"]
    assert recipe.stages[0].config.threshold.ratio == 1.5
    assert recipe.stages[0].budget is None and recipe.seed == 7
    assert not recipe.export.c
    assert sweep.current_value() == 1.0
    # null unsets the field: the method's default, as the recipe would have it unwritten
    unset = Sweep(parse_recipe(RECIPE), "share", "finetune.lr").recipe_for(None, seed=0)
    assert "lr" not in unset.as_written()["stages"][1]["finetune"]


@pytest.mark.parametrize(
    "stage, field, until",
    [("nope", "finetune.lr", None), ("share", "finetune.lr", "prune"), ("share", "a..b", None)],
)
def test_a_stage_the_recipe_lacks_or_a_measure_before_the_sweep_is_refused(stage, field, until):
    with pytest.raises(ConfigError):
        Sweep(parse_recipe(RECIPE), stage, field, until)


def test_the_command_tables_validation_rows_and_writes_them(tmp_path, capsys):
    recipe = tmp_path / "swept.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "sweep"
    argv = ["sweep", str(recipe), "--stage", "share", "--field", "config.bits", "--seeds", "0",
            "--out", str(out), "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main([*argv, "--values", "2", "3"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [(row["value"], row["in recipe"]) for row in rows] == [(2, False), (3, True)]
    assert rows[0]["bytes"] < rows[1]["bytes"]  # 2-bit indices pack smaller than 3-bit
    assert rows[0]["ratio"] > rows[1]["ratio"] > 1
    assert all("test" not in key for row in rows for key in row)  # the test split is not shown
    runs = sorted(p.parent for p in (out / "seed-0").glob("*/state.json"))
    assert len(runs) == 2  # a folder a value, both holding the prune stage trained once
    for run in runs:
        stages = run / "stages"
        assert (stages / "02-share.json").is_file() and not (stages / "03-quantize.json").exists()
    assert len({(run / "stages" / "01-prune.safetensors").stat().st_ino for run in runs}) == 1
    capsys.readouterr()
    assert main([*argv, "--values", "{bits: [1"]) == 2
    assert "--values" in capsys.readouterr().err
    assert main([*argv[:3], "fixed", *argv[4:], "--values", "2"]) == 2
    assert "no stage 'fixed'" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "refused"), "--values", "2", "99"]) == 2
    assert not (tmp_path / "refused").exists()  # a value the stage refuses: before any run
    assert "share.config.bits=99" in capsys.readouterr().err


def test_a_sweep_never_reads_the_test_split_and_a_report_run_measures_it_on_resume(
    tmp_path, monkeypatch
):
    from netshrink.baseline import cached_baseline
    from netshrink.data import DataSplits, load_data
    from netshrink.pipeline import run_recipe

    loader = DataSplits.loader

    def no_test(self, split, *args, **kwargs):
        assert split != "test", "a sweep read the test split"
        return loader(self, split, *args, **kwargs)

    sweep = Sweep(parse_recipe(RECIPE), "prune", "config.threshold.ratio")
    cache, baseline = tmp_path / "cache", sweep.recipe.baseline
    # the cached baseline's test top-1 is measured once, when it is trained, for every report
    cached_baseline(baseline.spec, load_data(sweep.recipe.data), baseline.fit, cache_dir=cache,
                    progress=False)  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(DataSplits, "loader", no_test)
        sweep.run([1.0], [0], tmp_path / "sweep", cache_dir=cache, progress=False)
    run = sweep.folder(tmp_path / "sweep", 1.0, 0)
    assert not (run / "model.nsk").exists()  # nothing packed
    # the full recipe run into the same folder resumes the swept stage and reports its test top-1
    result = run_recipe(sweep.recipe_for(1.0, 0), run, cache_dir=cache, latency=False,
                        progress=False)  # fmt: skip
    assert [r.name for r in result.stages] == ["baseline", "prune", "packed"]
    assert all(0.5 < r.measurement["top1"] <= 1.0 for r in result.stages)
    state = json.loads((run / "state.json").read_text())
    assert all(s["measurement"]["top1"] is not None for s in state["stages"])


def test_a_sweep_run_again_runs_no_value_twice(tmp_path, monkeypatch):
    from netshrink import pipeline

    methods = []
    run_stage = pipeline.run_stage
    monkeypatch.setattr(pipeline, "run_stage",
                        lambda model, stage, ctx: methods.append(stage.method)
                        or run_stage(model, stage, ctx))  # fmt: skip
    sweep = Sweep(parse_recipe(RECIPE), "share", "config.bits")
    first = sweep.run([2, 3], [0], tmp_path, cache_dir=tmp_path / "cache", progress=False)
    assert methods == ["prune_magnitude", "share_kmeans", "share_kmeans"]
    # interrupted after 3, started again with one value more: 2 and 3 are resumed, 4 is run
    # from the prune stage they share
    again = sweep.run([2, 3, 4], [0], tmp_path, cache_dir=tmp_path / "cache", progress=False)
    assert methods == ["prune_magnitude", "share_kmeans", "share_kmeans", "share_kmeans"]
    assert again[:2] == first
