"""`import netshrink` gives every method and its config, recipes, the file, the exports and
evaluation, without importing what only some callers need (ONNX Runtime)."""

import subprocess
import sys

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
                 "evaluate", "measure", "export_onnx", "export_onnx_int8", "export_c"):  # fmt: skip
        assert name in netshrink.__all__ and callable(getattr(netshrink, name)), name


def test_import_netshrink_leaves_onnx_runtime_unloaded():
    code = "import sys, netshrink; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
