"""The integer path (Ristretto's bit-accurate emulation; Kim et al.'s integer datapath) gives
exactly the fake-quantized model's logits: on ResNet-20 (residual adds, projections, global
average pooling), MobileNetV2 (ReLU6, depthwise), a model with concatenation, functional ops and
average pools that divide by 9 and 4, partially quantized models and a model trained on real
data. A too-narrow accumulator is caught and named; an op it cannot run is refused."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import (
    UNEVEN_POOLS,
    Attention,
    Copies,
    Fixup,
    Gates,
    MeanHead,
    OptionA,
    ShapeOps,
    TfSame,
    randomize_batchnorms,
    train_on_digits,
    uneven_pool_net,
)
from netshrink.codec import pack, unpack
from netshrink.errors import UnsupportedLayerError
from netshrink.models import ModelSpec, build_model
from netshrink.prune import PruneMagnitudeConfig, prune_magnitude
from netshrink.quant import (
    FixedPoint,
    IntegerModel,
    QuantConfig,
    fixed_point_formats,
    quantize,
    set_bits,
)
from netshrink.quant.fixed import to_integers
from netshrink.train import FitConfig, evaluate

SIZE = 16


def _zoo(name: str, size: int = SIZE, **args) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, args=args)
    model = build_model(spec, num_classes=10, in_channels=3, input_size=size)
    return randomize_batchnorms(model).eval()


def _images(n: int = 16, size: int = SIZE, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_identical(qmodel: nn.Module, x: torch.Tensor):
    out = IntegerModel(qmodel).run(x)
    with torch.no_grad():
        expected = qmodel(x).double()
    assert out.overflows == {}
    assert out.logits.dtype == torch.float64
    assert torch.equal(out.logits, expected)
    assert out.logits.abs().max() > 0 and out.logits.std() > 0  # not trivially equal
    return out


class Branches(nn.Module):
    """Functional ReLU, a concatenation of two branches, an average pool that counts its zero
    padding (divides by 9 everywhere), a functional one (by 4), max pooling, view and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 6, 3, padding=1)
        self.right = nn.Conv2d(8, 4, 1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.head = nn.Linear(10 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.left(x)), self.right(x)], dim=1)
        x = F.avg_pool2d(self.pool(x), 2)
        x = F.max_pool2d(x, 2)
        return self.head(x.view(x.size(0), -1))


# ---------------------------------------------------------------------------- bit-identical


def test_resnet20_with_residual_adds_and_projections():
    model = _zoo("resnet20")
    x = _images()
    qmodel = quantize(model, x)
    formats = fixed_point_formats(qmodel)
    assert {"layer2.0.shortcut.0", "layer3.0.shortcut.0"} <= set(formats.weights)
    assert sum(name.startswith("add") for name in formats.activations) == 9
    assert formats.activations["pool_quant"].divisor == 16  # 4x4 after two strides
    out = _assert_identical(qmodel, x)
    # the logits are fc's accumulator: integers at FL_w + FL_in, not requantized
    assert out.frac == formats.weights["fc"].frac + formats.activations["pool_quant"].frac
    assert torch.equal(torch.ldexp(out.integers.double(), torch.tensor(-out.frac)), out.logits)
    assert out.integers.dtype == torch.int64
    _assert_identical(quantize(model, x, QuantConfig(weights=4, activations=4)), x)


def test_mobilenet_v2_with_relu6_and_depthwise_convolutions():
    model = _zoo("mobilenet_v2", width=0.5)
    x = _images(8)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    qmodel = quantize(model, x)
    unsigned = [s for s in fixed_point_formats(qmodel).activations.values() if not s.signed]
    assert len(unsigned) == 35  # every conv + BN + ReLU6 triple, fused
    _assert_identical(qmodel, x)


def test_concatenation_functional_ops_and_average_pools():
    torch.manual_seed(0)
    model = Branches().eval()
    x = _images()
    qmodel = quantize(model, x)
    activations = fixed_point_formats(qmodel).activations
    assert activations["pool_quant"].divisor == 9
    assert activations["pool_quant"].input_frac == activations["cat_quant"].frac
    assert activations["avg_pool2d_quant"].divisor == 4
    assert activations["avg_pool2d_quant"].input_frac == activations["pool_quant"].frac
    assert not activations["stem_quant"].signed and activations["right_quant"].signed
    _assert_identical(qmodel, x)
    for bits in (4, 6, 12):
        _assert_identical(quantize(model, x, QuantConfig(weights=bits, activations=bits)), x)


@pytest.mark.parametrize(
    "name, args, float_layers",
    [
        ("resnet20", {"width": 8}, ("conv1",)),
        ("resnet20", {"width": 8}, ("layer2.0.shortcut.0", "fc")),
        ("mobilenet_v2", {"width": 0.5}, ("features.0.0",)),
    ],
)
def test_partial_quantization_is_still_identical(name, args, float_layers):
    model = _zoo(name, **args)
    x = _images(8)
    qmodel = quantize(model, x, QuantConfig(float_layers=float_layers))
    assert not set(float_layers) & set(fixed_point_formats(qmodel).weights)
    out = _assert_identical(qmodel, x)
    if "fc" in float_layers:  # float logits: no integers to give
        assert out.integers is None and out.frac is None


def test_the_integer_weights_are_the_formats_integers():
    qmodel = quantize(_zoo("resnet20", width=8), _images(8))
    formats = fixed_point_formats(qmodel)
    layers = IntegerModel(qmodel)._layers  # what the integer path multiplies with
    assert set(layers) == set(formats.weights)
    for name, spec in formats.weights.items():
        fmt = FixedPoint(spec.bits, spec.frac, spec.signed)
        weight = layers[name]["weight"]
        assert torch.equal(weight, weight.round())
        assert weight.min() >= fmt.qmin and weight.max() <= fmt.qmax
        assert weight.abs().max() >= 2 ** (fmt.bits - 2)  # Ristretto's range is used
        value = qmodel.get_submodule(name).weight.detach().double()
        assert torch.equal(weight * 2.0**-fmt.frac, value)
        bias_spec = formats.biases[name]
        bias_fmt = FixedPoint(bias_spec.bits, bias_spec.frac, bias_spec.signed)
        bias = layers[name]["bias"]
        assert bias.dtype == torch.int64
        assert bias.min() >= bias_fmt.qmin and bias.max() <= bias_fmt.qmax
        bias_value = qmodel.get_submodule(name).bias.detach().double()
        assert torch.equal(bias * 2.0**-bias_fmt.frac, bias_value)


# ------------------------------------------------------------------------------ on real data


@pytest.fixture(scope="module")
def trained(digits):
    """A small VGG (max pooling, dropout, two linear layers) after three epochs on digits."""
    spec = ModelSpec(name="vgg_small", args={"width": 0.25})
    return train_on_digits(digits, FitConfig(epochs=3, lr=0.05, batch_size=64), spec)


def test_a_model_trained_on_digits_is_identical_over_the_test_split(trained, digits):
    qmodel = quantize(trained, digits, QuantConfig(calibration_images=512))
    images, labels = next(iter(digits.loader("test", 1000)))
    assert len(labels) == 359
    out = _assert_identical(qmodel, images)
    top1 = float((out.logits.argmax(1) == labels).double().mean())
    assert top1 > 0.95
    integer = IntegerModel(qmodel)
    assert torch.equal(integer(images), out.logits.float())  # forward: float logits
    assert evaluate(integer, digits.loader("test", 128)).top1 == top1


def test_evaluating_the_integer_model_leaves_the_fixed_point_model_in_eval_mode(trained, digits):
    qmodel = quantize(trained, digits, QuantConfig(calibration_images=256))
    assert not qmodel.training
    evaluate(IntegerModel(qmodel), digits.loader("test", 128))
    assert qmodel.training is False  # else its dropout is live from now on


def test_the_integer_path_never_applies_dropout(trained, digits):
    qmodel = quantize(trained, digits, QuantConfig(calibration_images=256))
    images = next(iter(digits.loader("test", 128)))[0]
    expected = IntegerModel(qmodel).run(images).logits
    torch.manual_seed(0)
    in_training = IntegerModel(copy.deepcopy(qmodel).train()).run(images).logits
    assert float((in_training - expected).abs().max()) == 0.0


# --------------------------------------------------------------------------------- the edges


def test_a_global_pool_over_one_pixel_is_supported():
    # resnet20 accepts 4x4 inputs: after two strides the global average pool divides by 1
    model = _zoo("resnet20", size=4, width=8)
    x = _images(8, size=4)
    qmodel = quantize(model, x)
    spec = fixed_point_formats(qmodel).activations["pool_quant"]
    assert spec.divisor == 1
    assert "pool_input" not in spec.model_dump()  # written only where windows differ: no bytes
    _assert_identical(qmodel, x)


@pytest.mark.parametrize("case", UNEVEN_POOLS)
def test_average_pools_with_uneven_windows_divide_each_output_by_its_own_count(case, tmp_path):
    torch.manual_seed(0)
    model, side = uneven_pool_net(case)
    x = _images(16, size=side)
    qmodel = quantize(model, x)
    spec = fixed_point_formats(qmodel).activations["1_quant"]
    assert spec.pool_input == (side - 2, side - 2) and spec.input_frac is not None
    divisors = qmodel.get_submodule("1_quant").divisors
    assert divisors.min() < divisors.max()  # the case has windows of different sizes
    _assert_identical(qmodel, x)
    # a file keeps the pool's input size, and the model read from it divides alike
    path = pack(qmodel, tmp_path / "m.nsk", input_shape=(3, side, side), num_classes=10)
    rebuilt = unpack(path, copy.deepcopy(model))
    assert torch.equal(rebuilt.get_submodule("1_quant").divisors, divisors)
    _assert_identical(rebuilt, x)


def test_an_op_the_integer_path_cannot_run_is_refused_by_name():
    class Softmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 10)

        def forward(self, x):
            return self.fc(torch.softmax(self.conv(x), 1).flatten(1))

    torch.manual_seed(0)
    x = _images(4, size=8)
    qmodel = quantize(Softmax().eval(), x)
    assert "softmax_quant" in fixed_point_formats(qmodel).activations
    assert qmodel(x).shape == (4, 10)  # the fake-quantized model runs it
    with pytest.raises(UnsupportedLayerError, match=r"softmax \(softmax\)"):
        IntegerModel(qmodel)


def test_gates_and_element_wise_functions_run_on_integers_exactly():
    torch.manual_seed(0)
    model, x = Gates().eval(), _images()
    qmodel = quantize(model, x)
    _assert_identical(qmodel, x)
    coarse = quantize(model, x, QuantConfig(weights=6, activations=6))  # other grids and tables
    _assert_identical(coarse, x)


def test_channel_reductions_run_on_integers_exactly():
    torch.manual_seed(0)
    _assert_identical(quantize(Attention().eval(), _images()), _images())


def test_constants_and_differences_run_on_integers_exactly():
    torch.manual_seed(0)
    qmodel = quantize(Fixup().eval(), _images())
    assert "bias1a_quant" in dict(qmodel.named_modules())  # a constant on a grid of its own
    _assert_identical(qmodel, _images())


def test_a_layer_that_convolves_itself_is_a_layer(tmp_path):
    # timm's Conv2dSame: F.conv2d(x, self.weight, ...) in its forward, a batch norm after it
    torch.manual_seed(0)
    model = randomize_batchnorms(TfSame()).eval()
    x = _images(16, size=11)
    qmodel = quantize(model, x)
    assert set(fixed_point_formats(qmodel).weights) == {"conv1", "conv2", "fc"}  # bn folded
    _assert_identical(qmodel, x)
    with torch.no_grad():
        assert torch.corrcoef(torch.stack([qmodel(x).flatten(), model(x).flatten()]))[0, 1] > 0.95
    path = pack(qmodel, tmp_path / "m.nsk", input_shape=(3, 11, 11), num_classes=10)
    _assert_identical(unpack(path, TfSame()), x)


def test_a_pruned_layer_that_convolves_itself_keeps_its_own_forward():
    # a mask makes Conv2dSame an instance of a class from torch.nn.utils.parametrize, which fx
    # took for a torch.nn leaf: its SAME padding vanished from the graph (integers disagreed)
    torch.manual_seed(0)
    model = randomize_batchnorms(TfSame()).eval()
    prune_magnitude(model, PruneMagnitudeConfig(threshold={"kind": "sparsity", "sparsity": 0.5}))
    x = _images(16, size=11)
    _assert_identical(quantize(model, x), x)


def test_copies_and_clamps_run_on_integers_exactly():
    torch.manual_seed(0)
    _assert_identical(quantize(Copies().eval(), _images()), _images())


def test_zero_padding_runs_on_integers_exactly():
    torch.manual_seed(0)
    _assert_identical(quantize(OptionA().eval(), _images()), _images())


@pytest.mark.parametrize("bits", [8, 10])
def test_a_narrow_accumulator_overflows_and_is_named(bits):
    model = _zoo("resnet20", width=8)
    x = _images(8)
    wide = quantize(model, x, QuantConfig(accumulator=32))
    assert IntegerModel(wide).run(x).overflows == {}
    narrow = quantize(model, x, QuantConfig(accumulator=bits))
    assert fixed_point_formats(narrow).accumulator == bits
    out = IntegerModel(narrow).run(x)
    assert out.overflows and set(out.overflows) <= set(fixed_point_formats(narrow).weights) | {
        f"add_{i}" if i else "add" for i in range(9)
    }
    # the stem's count, recomputed: its accumulator integers outside [-2**(b-1), 2**(b-1) - 1]
    formats = fixed_point_formats(narrow)
    spec, x_spec = formats.weights["conv1"], formats.activations["x_quant"]
    conv = narrow.get_submodule("conv1")
    w = to_integers(conv.weight.detach().double(), FixedPoint(spec.bits, spec.frac))
    xq = to_integers(x.double(), FixedPoint(x_spec.bits, x_spec.frac, x_spec.signed))
    acc = F.conv2d(xq, w, None, 1, 1).long()
    bias_spec = formats.biases["conv1"]
    bias = to_integers(conv.bias.detach().double(), FixedPoint(bias_spec.bits, bias_spec.frac))
    acc = acc + (bias.long() << (spec.frac + x_spec.frac - bias_spec.frac)).reshape(1, -1, 1, 1)
    high = 2 ** (bits - 1) - 1
    assert out.overflows["conv1"] == int(((acc > high) | (acc < -high - 1)).sum()) > 0


def test_wide_formats_are_identical_in_float64():
    # float32 sums are exact only below 2**24 units: 16-bit formats need the float model in
    # float64 to match the (exact) integer path, as IntegerModel's docstring says.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(768, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = _images(32)
    qmodel = quantize(model, x, QuantConfig(weights=16, activations=16, accumulator=64))
    assert not torch.equal(IntegerModel(qmodel).run(x).logits, qmodel(x).double())
    out = IntegerModel(qmodel).run(x)
    assert torch.equal(out.logits, qmodel.double()(x.double())) and not out.overflows


def test_new_bit_widths_stay_identical():
    torch.manual_seed(0)
    model = Branches().eval()
    x = _images()
    qmodel = quantize(model, x)
    set_bits(qmodel, weights={"left": 4, "head": 5}, activations={"cat": 6, "pool": 5})
    activations = fixed_point_formats(qmodel).activations
    assert activations["cat_quant"].bits == 6 and activations["pool_quant"].bits == 5
    assert activations["pool_quant"].input_frac == activations["cat_quant"].frac
    assert activations["avg_pool2d_quant"].input_frac == activations["pool_quant"].frac
    _assert_identical(qmodel, x)


def test_shape_ops_quantize_and_run_on_integers_exactly():
    torch.manual_seed(0)
    model, x = ShapeOps().eval(), _images()
    _assert_identical(quantize(model, x), x)


def test_a_spatial_mean_runs_on_integers_exactly():
    torch.manual_seed(0)
    model, x = MeanHead().eval(), _images()
    _assert_identical(quantize(model, x), x)


def test_a_pool_window_that_depends_on_values_is_refused_by_name():
    from torch import fx

    from netshrink.quant.plan import static_value

    graph = fx.Graph()
    x = graph.placeholder("x")
    window = graph.call_method("sum", (x,))  # a value, not a shape
    pool = graph.call_function(F.avg_pool2d, (x, window))
    with pytest.raises(UnsupportedLayerError, match="avg_pool2d: its setting sum.*constant window"):
        static_value(window, pool)
    assert static_value((2, 3), pool) == (2, 3)
