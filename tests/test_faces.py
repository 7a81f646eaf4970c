"""A method exists once: its recipe stage, its command line and its Python config are faces of
the same stage model, so for the same inputs they give the same settings, defaults included.

Every method of netshrink.methods.METHODS has a case here (a new method fails
`test_every_method_has_a_case` until it gets one): the fields of a recipe stage, and, where a
family command runs it, that command's flags for the same fields.
"""

import pytest
import yaml

from netshrink.cli import build_parser
from netshrink.methods import METHOD_NAMES, stage_class
from netshrink.recipe import parse_recipe

# method -> (a recipe stage's fields, the family command's argv giving the same ones, or None)
CASES = {
    "prune_magnitude": (
        {"config": {"threshold": {"kind": "std", "ratio": 1.5}}},
        ["prune", "CKPT", "--method", "std", "--ratio", "1.5"],
    ),
    "prune_iterative": (
        {
            "config": {
                "prune": {"threshold": {"kind": "sparsity", "sparsity": 0.6}},
                "steps": 3,
                "retrain": {"epochs": 2},
            }
        },
        [
            "prune",
            "CKPT",
            "--method",
            "sparsity",
            "--sparsity",
            "0.6",
            "--steps",
            "3",
            "--retrain-epochs",
            "2",
        ],
    ),  # fmt: skip
    "prune_incremental": (
        {"config": {"budget": 2.0}},
        ["prune", "CKPT", "--method", "incremental", "--budget", "2"],
    ),
    "prune_gradual": (
        {"config": {"final_sparsity": 0.8}, "fit": {"epochs": 3}},
        ["prune", "CKPT", "--method", "gradual", "--sparsity", "0.8", "--retrain-epochs", "3"],
    ),
    "prune_variational": (
        {"config": {"kl_scale": 2.0, "fit": {"epochs": 3, "lr": 0.0005}}},
        [
            "prune",
            "CKPT",
            "--method",
            "variational",
            "--kl-scale",
            "2",
            "--retrain-epochs",
            "3",
            "--retrain-lr",
            "0.0005",
        ],
    ),  # fmt: skip
    "prune_filters": (
        {"config": {"amount": 0.25, "criterion": "l2"}, "finetune": {"epochs": 1}},
        [
            "prune",
            "CKPT",
            "--method",
            "filters",
            "--amount",
            "0.25",
            "--criterion",
            "l2",
            "--retrain-epochs",
            "1",
        ],
    ),  # fmt: skip
    "sensitivity": ({"sparsities": [0.5, 0.9]}, None),  # its command writes a folder instead
    "share_kmeans": (
        {"config": {"conv_bits": 8, "fc_bits": 5}, "finetune": {"epochs": 2}},
        ["share", "CKPT", "--method", "kmeans", "--bits", "conv=8,fc=5", "--finetune-epochs", "2"],
    ),
    "share_pq": (
        {"config": {"k": 16, "axis": "columns"}},
        ["share", "CKPT", "--method", "pq", "--k", "16", "--axis", "columns"],
    ),
    "share_rq": (
        {"config": {"stages": 3}},
        ["share", "CKPT", "--method", "rq", "--stages", "3"],
    ),
    "share_binary": (
        {"config": {"ternary": True}},
        ["share", "CKPT", "--method", "binary", "--ternary"],
    ),
    "share_soft": ({"config": {"tau": 0.01, "epochs": 2}}, None),  # `apply` is its command
    "factor_svd": (
        {"config": {"energy": 0.9}, "finetune": {"lr": 0.001}},
        ["share", "CKPT", "--method", "svd", "--energy", "0.9", "--finetune-lr", "0.001"],
    ),
    "fold_batchnorm": ({}, None),  # no family command: `netshrink apply` is its command
    "quantize": (
        {"config": {"weights": 6, "calibrate": "kl", "layer_weights": {"fc3": 8}}},
        ["quantize", "CKPT", "--weights", "6", "--calibrate", "kl", "--layer-bits", "fc3=8"],
    ),
    "search_bits": (
        {"config": {"budget": 0.5, "quant": {"activations": 6}}},
        ["quantize", "CKPT", "--auto", "--budget", "0.5", "--activations", "6"],
    ),
    "qat": (
        {"config": {"quant": {"weights": 4}, "fit": {"epochs": 1}}},
        ["qat", "CKPT", "--weights", "4", "--epochs", "1"],
    ),
    "distill": (
        {
            "config": {"temperature": 4.0, "alpha": 0.9, "fit": {"epochs": 2}},
            "prune": {"final_sparsity": 0.5},
        },
        [
            "distill",
            "--teacher",
            "T",
            "--student",
            "S",
            "--kd",
            "4,0.9",
            "--epochs",
            "2",
            "--sparsity",
            "0.5",
        ],
    ),  # fmt: skip
    "compressive": (
        {"config": {"constraint": {"kind": "levels", "count": 4}, "layer_fit": {"lr": 0.02}}},
        ["compressive", "CKPT", "--constraint", "levels", "--levels", "4", "--lr", "0.02"],
    ),
}


def test_every_method_has_a_case():
    assert set(CASES) == set(METHOD_NAMES)


def from_recipe(method: str, fields: dict):
    text = yaml.safe_dump(
        {"name": "t", "data": {"source": "digits"}, "baseline": {"model": "lenet300_100"},
         "stages": [{"method": method, **fields}]}
    )  # fmt: skip
    return parse_recipe(text).stages[0]


def from_python(method: str, fields: dict):
    """The stage class with the config given as its config object, as Python code would."""
    cls = stage_class(method)
    given = dict(fields)
    if "config" in given:
        given["config"] = cls.model_fields["config"].annotation(**given["config"])
    return cls(method=method, **given)


def from_apply(method: str, fields: dict):
    """`netshrink apply CKPT METHOD --set PATH=VALUE ...` with the fields flattened."""
    settings = [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                for path, value in _flatten(fields)]  # fmt: skip
    argv = ["apply", "CKPT", method, *(f"--set={s}" for s in settings), "--out", "OUT"]
    args = build_parser().parse_args(argv)
    return args.build(args)[-1]


def _flatten(fields: dict, prefix: str = ""):
    for key, value in fields.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("method", sorted(CASES))
def test_recipe_apply_and_python_give_the_same_stage(method):
    fields, _ = CASES[method]
    recipe = from_recipe(method, fields)
    assert from_apply(method, fields).model_dump() == recipe.model_dump()
    assert from_python(method, fields).model_dump() == recipe.model_dump()


@pytest.mark.parametrize("method", sorted(m for m, (_, argv) in CASES.items() if argv))
def test_the_family_command_gives_the_same_stage(method):
    fields, argv = CASES[method]
    args = build_parser().parse_args([*argv, "--out", "OUT"])
    stages = [stage for stage in args.build(args) if stage.method == method]
    assert len(stages) == 1
    assert stages[0].model_dump() == from_recipe(method, fields).model_dump()


def test_a_nested_setting_keeps_the_other_defaults_of_its_group():
    """qat's default formats calibrate with MSE: setting only the weight bits keeps that, from
    the recipe, the command line and a Python dict alike (the CLI used min-max before)."""
    recipe = from_recipe("qat", {"config": {"quant": {"weights": 5}}})
    assert recipe.config.quant.calibrate == "mse"
    assert from_python("qat", {"config": {"quant": {"weights": 5}}}).config == recipe.config
