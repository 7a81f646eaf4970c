import argparse
import json
import subprocess
import sys

import pytest

from netshrink.cli import build_parser, main


def test_missing_data_path_exits_2_with_one_line_naming_it():
    proc = subprocess.run(
        [sys.executable, "-m", "netshrink.cli", "train", "--data", "no/such/path"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no/such/path" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--model", "no_such_model", "--data", "digits"], "no_such_model"),
        (["train", "--data", "digits", "--epochs", "-1"], "--epochs"),
        (["train", "--data", "digits", "--model-args", "{bad json"], "JSON"),
        (["evaluate", "no/such/checkpoint"], "no/such/checkpoint"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error:") and words in err
    assert len(err.strip().splitlines()) == 1


def test_train_evaluate_measure_round_trip(tmp_path, capsys):
    out = tmp_path / "lenet"
    assert (
        main(
            [
                "train",
                "--model",
                "lenet300_100",
                "--data",
                "digits",
                "--epochs",
                "3",
                "--batch-size",
                "64",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert trained["test_top1"] > 0.85
    assert main(["evaluate", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # The checkpoint carries its data set, so evaluate measures exactly what train measured.
    assert evaluated["top1"] == pytest.approx(trained["test_top1"])
    assert main(["measure", str(out) + ".safetensors", "--format", "json", "--no-latency"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 64 * 300 + 300 + 30_100 + 1010
    assert rows[0]["top1"] == pytest.approx(trained["test_top1"])


def test_help_names_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "measure", "demo"):
        assert command in text


@pytest.mark.parametrize("value, words", [("0", "must be >= 1"), ("two", "not an integer")])
def test_a_bad_thread_count_is_a_usage_error_not_a_traceback(capsys, value, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "recipes/deep-compression-lenet5.yaml", "--threads", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --threads" in err and words in err


def test_demo_runs_the_demo_recipe_through_the_run_command(monkeypatch, tmp_path):
    import netshrink.cli

    ran = {}
    monkeypatch.setattr(netshrink.cli, "run_recipe",
                        lambda recipe, out, **kw: ran.update(name=recipe.name, out=out))  # fmt: skip
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert ran == {"name": "deep-compression-lenet5", "out": tmp_path / "demo"}


def test_version(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["--version"])
    assert capsys.readouterr().out.startswith("netshrink 0.")


def test_every_help_renders_and_shows_the_defaults():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        text = command.format_help()
        assert "--allow-import" in text and "--threads" in text, name
    prune = commands.choices["prune"].format_help()
    assert "(default: l1)" in prune and "default: 256" in prune  # --criterion, --batch-size
    share = commands.choices["share"].format_help()  # a method's default, where methods differ:
    assert "(default: pq 256, rq 16)" in share.replace("\n", " ").replace("  ", "")
