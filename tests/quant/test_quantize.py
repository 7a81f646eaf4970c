"""The fixed-point model (Ristretto-style post-training quantization): activation quantizers are
visible modules, the float model is left alone, an 8/8 model of a trained network keeps its
accuracy, configs and overrides are checked, set_bits keeps the recorded formats in step with the
modules, and deepcopy, checkpoints and .nsk files all give back the same fixed-point model."""

import copy
import math

import pydantic
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.codec.api import pack, unpack
from netshrink.edits import FixedPointFormats, FoldBatchNorm, structural_edits
from netshrink.errors import ConfigError
from netshrink.models import ModelSpec, build_model
from netshrink.quant import (
    ActQuant,
    FixedPoint,
    QuantConfig,
    WeightQuant,
    fixed_point_formats,
    fold_batchnorm,
    is_quantized,
    quantize,
    reestimate_weight_formats,
    set_bits,
)
from netshrink.quant.quantize import weight_quant
from netshrink.train import FitConfig, evaluate, fit

SPEC = ModelSpec(name="resnet20", args={"width": 10})
SHAPE = (1, 8, 8)  # scikit-learn digits


def _build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC, num_classes=10, in_channels=1, input_size=8)


@pytest.fixture(scope="module")
def trained(digits):
    """ResNet-20 (width 10) after three epochs on digits: about 97% top-1, in under a second."""
    model = _build()
    fit(model, digits, FitConfig(epochs=3, lr=0.05, batch_size=64), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def qmodel(trained, digits):
    return quantize(trained, digits, QuantConfig(calibration_images=512))


@pytest.fixture(scope="module")
def images(digits):
    return next(iter(digits.loader("test", 256)))[0]


def _quantizers(model: nn.Module) -> dict[str, ActQuant]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ActQuant)}


def _weight_formats(model: nn.Module) -> dict[str, FixedPoint]:
    found = {}
    for name, module in model.named_modules():
        for tensor in ("weight", "bias"):
            quant = weight_quant(module, tensor)
            if quant is not None:
                found[f"{name}.{tensor}"] = quant.fmt
    return found


def _formats_of_modules(model: nn.Module) -> dict:
    """What the modules say, in the shape of FixedPointFormats."""
    weights = {k[: -len(".weight")]: f for k, f in _weight_formats(model).items() if "weight" in k}
    biases = {k[: -len(".bias")]: f for k, f in _weight_formats(model).items() if "bias" in k}
    activations = {n: (q.fmt, q.divisor, q.input_frac) for n, q in _quantizers(model).items()}
    return {"weights": weights, "biases": biases, "activations": activations}


def _formats_of_edit(edit: FixedPointFormats) -> dict:
    def fmt(spec):
        return FixedPoint(spec.bits, spec.frac, spec.signed)

    return {
        "weights": {n: fmt(s) for n, s in edit.weights.items()},
        "biases": {n: fmt(s) for n, s in edit.biases.items()},
        "activations": {n: (fmt(s), s.divisor, s.input_frac) for n, s in edit.activations.items()},
    }


# ---------------------------------------------------------------------------------- the model


def test_print_shows_the_activation_quantizers(qmodel, capsys):
    print(qmodel)
    text = capsys.readouterr().out
    quantizers = _quantizers(qmodel)
    # the input, the stem, two per block (conv1 fused with its ReLU, conv2), each residual add,
    # the two projections and the global pool; the fc's output is the accumulator
    assert len(quantizers) == 1 + 1 + 9 * 2 + 9 + 2 + 1 == 32
    assert text.count("ActQuant(fmt=") == len(quantizers)
    for name, quantizer in quantizers.items():
        assert f"({name}): ActQuant(fmt={quantizer.fmt}" in text
    assert "(pool_quant): ActQuant(fmt=8." in text and "divisor=4" in text  # 2x2 after two strides
    assert text.count("WeightQuant(fmt=8.") == 22  # 19 convs + 2 projections + fc
    assert text.count("WeightQuant(fmt=16.") == 22  # their biases (folded batch norms)


def test_the_float_model_is_left_unchanged(images):
    model = _build().train()  # even in training mode: quantize works on an eval-mode copy
    state = copy.deepcopy(model.state_dict())
    before = model.eval()(images)
    model.train()
    qmodel = quantize(model, images[:64])
    assert is_quantized(qmodel) and not is_quantized(model)
    assert model.training
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 21
    assert structural_edits(model) == []
    assert torch.equal(model.eval()(images), before)
    assert not qmodel.training


def test_8_bit_quantization_of_a_trained_model_loses_less_than_a_point(trained, qmodel, digits):
    test = digits.loader("test", 512)
    float_top1 = evaluate(trained, test).top1
    fixed_top1 = evaluate(qmodel, test).top1
    assert float_top1 > 0.95  # 359 test images
    assert fixed_top1 >= float_top1 - 0.01
    assert fixed_top1 > 0.95


def test_the_formats_are_recorded_and_every_weight_is_on_its_grid(qmodel):
    edits = structural_edits(qmodel)
    assert [type(e) for e in edits] == [FoldBatchNorm] * 21 + [FixedPointFormats]
    formats = fixed_point_formats(qmodel)
    assert formats == edits[-1]
    assert _formats_of_edit(formats) == _formats_of_modules(qmodel)
    assert formats.accumulator == 32 and formats.float_layers == ()
    for name, fmt in _weight_formats(qmodel).items():
        layer, tensor = name.rsplit(".", 1)
        module = qmodel.get_submodule(layer)
        q = getattr(module, tensor).detach().double() * 2.0**fmt.frac
        assert torch.equal(q, q.round()), name  # on the grid
        assert q.min() >= fmt.qmin and q.max() <= fmt.qmax, name
        if tensor == "weight":  # Ristretto's rule on the dense tensor
            top = module.parametrizations.weight.original.abs().max().item()
            assert fmt == FixedPoint(8, 8 - (math.ceil(math.log2(top)) + 1)), name


def test_a_bias_shifts_exactly_into_the_accumulator(qmodel):
    formats = fixed_point_formats(qmodel)
    inputs = {"conv1": "x_quant", "layer1.0.conv1": "conv1_quant", "fc": "pool_quant"}
    for layer, point in inputs.items():
        accumulator = formats.weights[layer].frac + formats.activations[point].frac
        assert formats.biases[layer].frac <= accumulator
        assert formats.biases[layer].bits == 16


def test_calibration_takes_a_tensor_batches_or_data_splits_alike(trained, digits):
    loader = digits.loader("train", 256, shuffle=True, augment=False)
    batches = [x for x, _ in loader][:2]  # 512 images, in the order DataSplits calibration uses
    config = QuantConfig(calibration_images=512)
    from_splits = fixed_point_formats(quantize(trained, digits, config))
    from_tensor = fixed_point_formats(quantize(trained, torch.cat(batches), config))
    from_pairs = fixed_point_formats(quantize(trained, list(loader), config))
    assert from_splits == from_tensor == from_pairs
    with pytest.raises(ConfigError, match="empty"):
        quantize(trained, [], config)


# ---------------------------------------------------------------------------------- the config


def test_quantizing_twice_raises_config_error(qmodel, images):
    with pytest.raises(ConfigError, match="already fixed point"):
        quantize(qmodel, images)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"layer_weights": {"conv9": 4}}, "conv9"),
        ({"layer_weights": {"bn1": 4}}, "bn1"),
        ({"layer_weights": {"conv1": 4}, "float_layers": ("conv1",)}, "conv1"),
        ({"layer_activations": {"nowhere": 4}}, "nowhere"),
        ({"float_layers": ("bn1",)}, "bn1"),  # a (folded) batch norm, not a layer
        ({"float_layers": ("relu",)}, "relu"),
        ({"float_layers": ("layer9",)}, "layer9"),
    ],
)
def test_bad_overrides_raise_config_error(trained, images, config, message):
    with pytest.raises(ConfigError, match=message):
        quantize(trained, images[:32], QuantConfig(**config))


@pytest.mark.parametrize(
    "config",
    [
        {"weights": 1},
        {"weights": 17},
        {"activations": 1},
        {"accumulator": 4},
        {"calibrate": "entropy"},
        {"calibration_images": 0},
        {"percentile": 0},
        {"rounding": "down"},
        {"bits": 8},
    ],
)
def test_config_fields_are_validated(config):
    with pytest.raises(pydantic.ValidationError):
        QuantConfig(**config)


@pytest.mark.parametrize(
    "field, bits",
    [
        ("layer_weights", 1),
        ("layer_weights", 17),
        ("layer_activations", 1),
        ("layer_activations", 17),
    ],
)
def test_per_layer_bits_obey_the_same_limits_as_the_defaults(trained, images, field, bits):
    # `weights` and `activations` take 2..16 bits; an override must not slip past that (17-bit
    # weights, a 1-bit activation), nor fail deep inside with a bare ValueError.
    with pytest.raises((ConfigError, pydantic.ValidationError)):
        quantize(trained, images[:32], QuantConfig(**{field: {"conv1": bits}}))


def test_overrides_set_those_layers_bits(trained, images):
    config = QuantConfig(
        weights=6, activations=7, layer_weights={"fc": 4}, layer_activations={"conv1": 5}
    )
    formats = fixed_point_formats(quantize(trained, images, config))
    assert formats.weights["fc"].bits == 4
    assert {s.bits for n, s in formats.weights.items() if n != "fc"} == {6}
    assert formats.activations["conv1_quant"].bits == 5
    assert {s.bits for n, s in formats.activations.items() if n != "conv1_quant"} == {7}


def test_float_layers_stay_in_float(trained, images):
    qmodel = quantize(trained, images, QuantConfig(float_layers=("conv1", "fc")))
    folded = fold_batchnorm(copy.deepcopy(trained))
    for name in ("conv1", "fc"):
        module = qmodel.get_submodule(name)
        assert not parametrize.is_parametrized(module)
        assert weight_quant(module) is None
        assert torch.equal(module.weight, folded.get_submodule(name).weight)
    formats = fixed_point_formats(qmodel)
    assert formats.float_layers == ("conv1", "fc")
    assert "conv1" not in formats.weights and "fc" not in formats.weights
    assert len(formats.weights) == 20
    for name in formats.weights:
        assert isinstance(weight_quant(qmodel.get_submodule(name)), WeightQuant)
    # the input only reaches a float layer: no quantizer; the pool before fc still has one
    assert "x_quant" not in formats.activations and "pool_quant" in formats.activations


# ------------------------------------------------------------------------------------ set_bits


def test_set_bits_changes_formats_and_the_recorded_edit_agrees(trained, digits, images):
    qmodel = quantize(trained, digits, QuantConfig(calibration_images=512))
    before = fixed_point_formats(qmodel)
    out_before = qmodel(images)
    set_bits(
        qmodel,
        weights={"conv1": 4, "layer2.0.shortcut.0": 5},
        activations={"conv1": 6, "add_8_quant": 5, "layer3.2.conv2": 4},
    )
    after = fixed_point_formats(qmodel)
    assert structural_edits(qmodel)[-1] == after
    assert len(structural_edits(qmodel)) == 22  # replaced, not appended
    assert _formats_of_edit(after) == _formats_of_modules(qmodel)
    assert after.weights["conv1"].bits == 4 and after.weights["layer2.0.shortcut.0"].bits == 5
    # Ristretto's rule at the new width: same integer length, fewer fractional bits
    assert after.weights["conv1"].frac == before.weights["conv1"].frac - 4
    assert after.activations["conv1_quant"].bits == 6
    assert after.activations["conv1_quant"].frac == before.activations["conv1_quant"].frac - 2
    assert after.activations["add_8_quant"].bits == 5
    assert after.activations["layer3_2_conv2_quant"].bits == 4
    # dependents follow: the pool divides add_8's values, and conv1's bias sits at the new scale
    assert after.activations["pool_quant"].input_frac == after.activations["add_8_quant"].frac
    accumulator = after.weights["conv1"].frac + after.activations["x_quant"].frac
    assert after.biases["conv1"].frac <= accumulator
    unchanged = set(before.weights) - {"conv1", "layer2.0.shortcut.0"}
    assert all(after.weights[n] == before.weights[n] for n in unchanged)
    assert not torch.equal(qmodel(images), out_before)


def test_set_bits_rejects_unknown_names_and_uncalibrated_models(qmodel, tmp_path):
    with pytest.raises(ConfigError, match="not a quantized layer"):
        set_bits(qmodel, weights={"conv9": 4})
    with pytest.raises(ConfigError, match="no activation quantizer"):
        set_bits(qmodel, activations={"conv9": 4})
    with pytest.raises(ConfigError, match="not fixed point"):
        set_bits(_build(), weights={"conv1": 4})
    copied = copy.deepcopy(qmodel)
    copied.get_submodule("conv1_quant").statistics = None  # as after loading a checkpoint
    with pytest.raises(ConfigError, match="calibration statistics"):
        set_bits(copied, activations={"conv1": 6})


@pytest.mark.parametrize("bits", [1, 17])
def test_set_bits_checks_the_bit_width(qmodel, bits):
    copied = copy.deepcopy(qmodel)
    with pytest.raises(ConfigError):
        set_bits(copied, weights={"conv1": bits})


def test_reestimate_follows_the_weights(qmodel):
    copied = copy.deepcopy(qmodel)
    before = fixed_point_formats(copied).weights["layer1.0.conv1"]
    with torch.no_grad():
        copied.get_submodule("layer1.0.conv1").parametrizations.weight.original.mul_(
            4.0
        )  # as QAT might
    reestimate_weight_formats(copied)
    after = fixed_point_formats(copied)
    assert after.weights["layer1.0.conv1"] == before.model_copy(update={"frac": before.frac - 2})
    assert structural_edits(copied)[-1] == after
    assert fixed_point_formats(qmodel).weights["layer1.0.conv1"] == before  # the original stays


# ------------------------------------------------------------------------- copies and files


def test_deepcopy_keeps_the_structural_edits(qmodel, images):
    copied = copy.deepcopy(qmodel)
    assert structural_edits(copied) == structural_edits(qmodel)
    assert fixed_point_formats(copied) == fixed_point_formats(qmodel)
    assert torch.equal(copied(images), qmodel(images))
    set_bits(copied, weights={"fc": 4})  # the copy's list is its own
    assert fixed_point_formats(qmodel).weights["fc"].bits == 8
    assert structural_edits(qmodel)[-1].weights["fc"].bits == 8


def test_a_checkpoint_gives_back_the_same_fixed_point_model(qmodel, images, tmp_path):
    meta = CheckpointMeta(model=SPEC, input_shape=SHAPE, num_classes=10)
    stem = save_checkpoint(qmodel, tmp_path / "fixed", meta)
    loaded, loaded_meta = load_checkpoint(stem)
    assert loaded_meta.edits == structural_edits(qmodel)
    assert is_quantized(loaded) and not loaded.training
    assert fixed_point_formats(loaded) == fixed_point_formats(qmodel)
    assert _formats_of_modules(loaded) == _formats_of_modules(qmodel)
    assert torch.equal(loaded(images), qmodel(images))
    assert set(_quantizers(loaded)) == set(_quantizers(qmodel))
    # only the values the forward pass uses are stored: no dense `original`s
    float_meta = CheckpointMeta(model=SPEC, input_shape=SHAPE, num_classes=10)
    float_stem = save_checkpoint(fold_batchnorm(_build().eval()), tmp_path / "float", float_meta)
    size = (tmp_path / "fixed.safetensors").stat().st_size
    assert size <= (tmp_path / "float.safetensors").stat().st_size
    assert float_stem.name == "float"


def test_a_checkpoint_after_set_bits_keeps_the_new_widths(qmodel, images, tmp_path):
    copied = copy.deepcopy(qmodel)
    set_bits(copied, weights={"layer1.1.conv2": 5}, activations={"add_4_quant": 6})
    meta = CheckpointMeta(model=SPEC, input_shape=SHAPE, num_classes=10)
    loaded, _ = load_checkpoint(save_checkpoint(copied, tmp_path / "narrow", meta))
    assert fixed_point_formats(loaded) == fixed_point_formats(copied)
    assert fixed_point_formats(loaded).weights["layer1.1.conv2"].bits == 5
    assert torch.equal(loaded(images), copied(images))


def test_stochastic_rounding_applies_in_training_only(trained, images):
    config = QuantConfig(rounding="stochastic", calibration_images=256)
    stochastic = quantize(trained, images, config)
    nearest = quantize(trained, images, config.model_copy(update={"rounding": "nearest"}))
    assert fixed_point_formats(stochastic) == fixed_point_formats(nearest)
    assert {q.rounding for q in _quantizers(stochastic).values()} == {"stochastic"}
    assert torch.equal(stochastic(images), nearest(images))  # eval mode: round to nearest
    stochastic.train()
    torch.manual_seed(0)
    first = stochastic.get_submodule("fc").weight.detach()
    torch.manual_seed(1)
    second = stochastic.get_submodule("fc").weight.detach()
    assert not torch.equal(first, second)
    step = 2.0 ** -fixed_point_formats(stochastic).weights["fc"].frac
    assert float((first - second).abs().max()) == step  # the two neighbours, one step apart


def test_pack_and_unpack_give_back_the_same_fixed_point_model(trained, qmodel, images, tmp_path):
    info = {"spec": SPEC, "input_shape": SHAPE, "num_classes": 10}
    pack(qmodel, tmp_path / "fixed.nsk", **info)
    pack(trained, tmp_path / "float.nsk", **info)
    unpacked = unpack(tmp_path / "fixed.nsk")
    assert is_quantized(unpacked)
    assert fixed_point_formats(unpacked) == fixed_point_formats(qmodel)
    assert _formats_of_modules(unpacked) == _formats_of_modules(qmodel)
    assert torch.equal(unpacked(images), qmodel(images))
    fixed_size = (tmp_path / "fixed.nsk").stat().st_size
    float_size = (tmp_path / "float.nsk").stat().st_size
    # 8-bit weights (16-bit biases) as integers, against float32: about a quarter
    assert fixed_size < float_size / 3


def test_quantizing_a_pruned_model_leaves_the_original_working(digits):
    """deepcopy shares parametrize's injected class: the copy must get its own (copy_model)."""
    from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude

    model = build_model(ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    qmodel = quantize(model, digits, QuantConfig())
    assert type(qmodel.fc1) is not type(model.fc1)
    assert torch.equal(model(x), before)  # the original still runs, unchanged
