"""`import netshrink` gives every method and its config, recipes, the file, the exports and
evaluation, without importing what only some callers need (ONNX Runtime)."""

import subprocess
import sys

import pytest

import netshrink
from netshrink.methods import METHODS, method_name

# Methods whose function is not named as their recipe `method:`.
FUNCTIONS = {
    "sensitivity": "sensitivity_analysis",
    "qat": "train_quantized",
    "compressive": "train_compressive",
}


def test_every_method_and_its_config_is_public():
    for cls in METHODS:
        method = method_name(cls)
        function = FUNCTIONS.get(method, method)
        assert function in netshrink.__all__ and callable(getattr(netshrink, function)), method
        config = cls.model_fields.get("config")
        if config is not None:
            assert config.annotation.__name__ in netshrink.__all__, method
            assert getattr(netshrink, config.annotation.__name__) is config.annotation


def test_the_rest_of_the_flow_is_public():
    for name in ("run_recipe", "load_recipe", "pack", "unpack", "packed_bytes", "summarize",
                 "evaluate", "measure"):  # fmt: skip
        assert name in netshrink.__all__ and callable(getattr(netshrink, name)), name
    for name in ("export_onnx", "export_onnx_int8", "export_c"):  # imported on first use
        assert callable(getattr(netshrink, name)), name


def test_import_netshrink_leaves_onnx_runtime_unloaded():
    code = "import sys, netshrink; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_every_public_function_taking_a_config_takes_a_mapping_too():
    import inspect

    from netshrink.config import _config_class, _resolve

    # load_data validates its mapping itself; a stage mapping goes through parse_stage, which
    # reads its `method:` to know the class.
    exempt = {"load_data", "run_stage"}
    checked = []
    for name in sorted(set(netshrink.__all__) - exempt):
        function = getattr(netshrink, name)
        if not inspect.isfunction(function):
            continue
        target = inspect.unwrap(function)
        params = inspect.signature(target).parameters.values()
        if any(_config_class(_resolve(p.annotation, target.__globals__)) for p in params):
            assert function is not target, f"{name}: decorate it with config.takes_mappings"
            checked.append(name)
    assert {"share_kmeans", "quantize", "fit", "pack", "train_compressive"} <= set(checked)


def test_a_mapping_gives_the_same_model_as_the_config(mlp):
    import copy

    import torch

    from netshrink.errors import ConfigError

    twin = copy.deepcopy(mlp)
    netshrink.share_kmeans(mlp, {"bits": 2, "init": "density"})
    netshrink.share_kmeans(twin, netshrink.ShareKmeansConfig(bits=2, init="density"))
    for a, b in zip(mlp.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="ShareKmeansConfig: bits"):
        netshrink.share_kmeans(mlp, {"bits": 0})
