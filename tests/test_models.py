"""Tests of the model zoo and the ModelSpec registry."""

from __future__ import annotations

import json
import sys
import textwrap

import pydantic
import pytest
import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.models import (
    MODELS,
    ModelSpec,
    build_model,
    lenet5,
    lenet5_caffe,
    lenet300_100,
    mobilenet_v2,
    resnet20,
    vgg_small,
)
from netshrink.models.mobilenet import InvertedResidual
from netshrink.models.resnet import BasicBlock


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lenet300_100", {}),
        ("lenet300_100", {"in_channels": 3, "input_size": 32}),
        ("lenet5", {}),
        ("lenet5", {"input_size": 32}),
        ("lenet5_caffe", {}),
        ("lenet5_caffe", {"input_size": 32}),
        ("vgg_small", {}),
        ("vgg_small", {"in_channels": 3, "input_size": 32}),
        ("resnet20", {}),
        ("resnet20", {"in_channels": 1, "input_size": 28}),
        ("mobilenet_v2", {"width": 0.5}),
        ("mobilenet_v2", {"width": 0.5, "in_channels": 1, "input_size": 28}),
    ],
)
def test_forward_shape(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=7, **kwargs)
    size = kwargs.get("input_size", 32 if name in ("resnet20", "mobilenet_v2") else 28)
    channels = kwargs.get("in_channels", 3 if name in ("resnet20", "mobilenet_v2") else 1)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_exact_parameter_counts() -> None:
    assert count(lenet300_100()) == 266_610
    assert count(lenet5_caffe()) == 431_080
    assert count(lenet5()) == 61_706
    assert count(mobilenet_v2(num_classes=1000, in_channels=3, input_size=224)) == 3_504_872
    # He et al. report 0.27M with option A (zero-padded shortcuts): 269,722. Option B's two 1x1
    # projections with their BatchNorms (512 + 64 and 2,048 + 128) add the other 2,752.
    assert count(resnet20()) == 272_474
    # 286,432 - 448 conv biases (dropped before BatchNorm) + 896 BN + 295,168 + 2,570.
    assert count(vgg_small()) == 584_618
    assert count(vgg_small(in_channels=3, input_size=32)) == 814_570
    assert count(vgg_small(batch_norm=False)) == 584_170


def test_input_size_changes_only_the_first_linear_layer() -> None:
    # lenet5: 16*5*5 -> 16*6*6 inputs to fc1 at 32x32.
    assert count(lenet5(input_size=32)) - count(lenet5()) == (576 - 400) * 120
    assert count(lenet5_caffe(input_size=32)) - count(lenet5_caffe()) == (1250 - 800) * 500
    # global pooling: ResNet-20's size does not depend on the input.
    assert count(resnet20(input_size=64)) == count(resnet20())


def test_resnet20_structure() -> None:
    model = resnet20()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    projections = [b for b in blocks if len(b.shortcut) > 0]
    assert [b.conv1.stride for b in projections] == [(2, 2), (2, 2)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 + 2
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]


def test_mobilenet_v2_strides_and_residuals() -> None:
    small = mobilenet_v2()
    assert small.features(torch.zeros(1, 3, 32, 32)).shape == (1, 1280, 4, 4)
    large = mobilenet_v2(input_size=224)
    assert large.features(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
    blocks = [m for m in large.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10
    depthwise = [m for m in large.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert len(depthwise) == 17


def test_width_multipliers_scale_parameters() -> None:
    assert count(vgg_small(width=0.5)) < count(vgg_small()) < count(vgg_small(width=2.0))
    assert count(resnet20(width=8)) < count(resnet20()) < count(resnet20(width=32))
    assert count(mobilenet_v2(width=0.5)) < count(mobilenet_v2()) < count(mobilenet_v2(width=1.4))
    assert count(vgg_small(width=0.5)) == 147_162
    assert count(mobilenet_v2(width=0.5)) == 700_490
    assert count(vgg_small(width=0.001)) > 0  # channels never round down to zero


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (lenet5, {"input_size": 11}),
        (lenet5_caffe, {"input_size": 15}),
        (vgg_small, {"input_size": 7}),
        (vgg_small, {"width": 0}),
        (vgg_small, {"width": float("nan")}),
        (vgg_small, {"batch_norm": "yes"}),
        (resnet20, {"width": 1.5}),
        (mobilenet_v2, {"width": -1.0}),
        (mobilenet_v2, {"input_size": 4}),
        (lenet300_100, {"num_classes": 0}),
        (lenet300_100, {"in_channels": True}),
    ],
)
def test_factories_reject_bad_arguments(factory, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        factory(**kwargs)


def test_smallest_valid_inputs_run() -> None:
    assert lenet5(input_size=12)(torch.zeros(1, 1, 12, 12)).shape == (1, 10)
    assert lenet5_caffe(input_size=16)(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    assert vgg_small(input_size=8)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_parse_string_forms() -> None:
    assert ModelSpec.parse("lenet5") == ModelSpec(name="lenet5")
    spec = ModelSpec.parse(" vgg_small(width=0.5, batch_norm=False) ")
    assert spec.name == "vgg_small"
    assert spec.args == {"width": 0.5, "batch_norm": False}
    assert ModelSpec.parse("mypkg.models:make_net").to_json() == {
        "name": "mypkg.models:make_net",
        "args": {},
    }
    merged = ModelSpec.parse("vgg_small(width=0.5)", '{"batch_norm": false}')
    assert merged.args == {"width": 0.5, "batch_norm": False}
    assert ModelSpec.parse("f(sizes=(1, 2))").args == {"sizes": [1, 2]}


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec.parse("vgg_small(width=0.25, batch_norm=True)")
    assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(ConfigError):
        ModelSpec.from_json({"name": "lenet5", "extra": 1})


def test_spec_is_frozen() -> None:
    spec = ModelSpec.parse("lenet5")
    with pytest.raises(pydantic.ValidationError):
        spec.name = "vgg_small"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "args_json", "fragment"),
    [
        ("vgg_small(width=0.5", None, "cannot parse"),
        ("vgg_small(0.5)", None, "positional argument '0.5'"),
        ("vgg_small(**kw)", None, "'**kw'"),
        ("vgg_small(width=__import__('os'))", None, "not a literal"),
        ("vgg_small(width=1, width=2)", None, "given twice"),
        ("vgg_small(width=0.5)", '{"width": 1.0}', "width"),
        ("vgg_small", "[1, 2]", "JSON object"),
        ("vgg_small", "{width: 1}", "not valid JSON"),
        ("vgg_small(width={1, 2})", None, "JSON-serialisable"),
        ("mypkg.models.make_net", None, "package.module:factory"),
        ("", None, "cannot parse"),
    ],
)
def test_parse_errors(text: str, args_json: str | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSpec.parse(text, args_json)
    assert fragment in str(info.value)


def test_args_must_be_json_serialisable() -> None:
    with pytest.raises(ConfigError):
        ModelSpec(name="lenet5", args={"x": object()})
    with pytest.raises(ConfigError):
        ModelSpec(name="lenet5", args={"x": float("inf")})


def test_build_zoo_model_fills_data_args() -> None:
    model = build_model(ModelSpec.parse("lenet5"), num_classes=3, in_channels=3, input_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    # spec.args win over the data-derived values.
    model = build_model(ModelSpec.parse("lenet300_100(num_classes=4)"), num_classes=9)
    assert model.fc3.out_features == 4


def test_build_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'alexnet'.*lenet5"):
        build_model(ModelSpec.parse("alexnet"))
    with pytest.raises(ConfigError, match="vgg_small.*depth"):
        build_model(ModelSpec.parse("vgg_small(depth=3)"))
    with pytest.raises(ConfigError, match="vgg_small.*width"):
        build_model(ModelSpec.parse("vgg_small(width='wide')"))
    with pytest.raises(ConfigError, match="no_such_pkg_xyz.nets:make"):
        _trusted(ModelSpec.parse("no_such_pkg_xyz.nets:make"))


def _trusted(spec: ModelSpec, **data_args):
    """build_model with the spec's own factory allowed, as when the user typed its name."""
    return build_model(spec, allow_import=[spec.name], **data_args)


USER_MODULE = textwrap.dedent(
    """
    from torch import nn

    def make_net(hidden, num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.Linear(hidden, num_classes))

    def make_any(**kwargs):
        make_any.seen = kwargs
        return nn.Identity()

    def not_a_model(num_classes=10):
        return 42

    def strict(*, width):
        return nn.Linear(width, width)
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "nsk_user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    # each test imports its own copy, not one cached by an earlier test's tmp_path
    monkeypatch.delitem(sys.modules, "nsk_user_nets", raising=False)
    return "nsk_user_nets"


def test_build_from_import_path(user_module: str) -> None:
    spec = ModelSpec.parse(f"{user_module}:make_net", '{"hidden": 16}')
    # make_net takes num_classes but not in_channels/input_size: only num_classes is passed.
    model = _trusted(spec, num_classes=5, in_channels=3, input_size=32)
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 5)
    assert model[2].in_features == 16


def test_build_from_import_path_passes_all_to_var_keyword(user_module: str) -> None:
    import importlib

    spec = ModelSpec.parse(f"{user_module}:make_any(depth=2)")
    _trusted(spec, num_classes=5, in_channels=3, input_size=None)
    seen = importlib.import_module(user_module).make_any.seen
    assert seen == {"depth": 2, "num_classes": 5, "in_channels": 3}


def test_build_from_import_path_errors(user_module: str) -> None:
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        _trusted(ModelSpec.parse(f"{user_module}:not_a_model"))
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        _trusted(ModelSpec.parse(f"{user_module}:missing"))
    with pytest.raises(ConfigError, match="strict.*width"):
        _trusted(ModelSpec.parse(f"{user_module}:strict"), num_classes=3)
    with pytest.raises(ConfigError, match="make_net.*hidden"):
        _trusted(ModelSpec.parse(f"{user_module}:make_net"))


def test_an_import_path_is_built_only_when_named_exactly(user_module: str) -> None:
    """The import policy: no factory runs unless its exact 'module:callable' is allowed."""
    spec = ModelSpec.parse(f"{user_module}:make_any")
    refusals = ((), [f"{user_module}:make_net"], True, [user_module], "nsk_user_nets:make_any")
    for refused in refusals:
        with pytest.raises(ConfigError, match="allow"):
            build_model(spec, allow_import=refused)
    assert user_module not in sys.modules  # refused before anything was imported
    assert isinstance(build_model(spec, allow_import=[spec.name]), torch.nn.Identity)
