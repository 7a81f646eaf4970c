"""The C99 export: generated code builds with -Werror and gives the integer path's logits bit for
bit (netshrink.quant.IntegerModel is the reference)."""

import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from helpers import (
    UNEVEN_POOLS,
    Attention,
    Branchy,
    Copies,
    Fixup,
    Gates,
    MeanHead,
    OptionA,
    SamePad,
    ShapeOps,
    TfSame,
    require_gcc,
    uneven_pool_net,
)
from netshrink.errors import UnsupportedLayerError
from netshrink.export.c import (
    _HELPERS,
    CFLAGS,
    build_and_run,
    export_c,
    flash_and_ram,
    images_per_second,
    quantize_input,
)
from netshrink.models import lenet5, mobilenet_v2, resnet20
from netshrink.quant import IntegerModel, QuantConfig, quantize


def _randomise_batch_norm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model.eval()


def _check_bit_exact(qmodel, images, tmp_path, shape):
    export = export_c(qmodel, tmp_path / "out", shape)
    logits = build_and_run(export, quantize_input(images, export), tmp_path / "build")
    reference = IntegerModel(qmodel).run(images)
    assert reference.integers is not None and reference.frac == export.output_frac
    assert logits.shape == (len(images), export.num_classes)
    np.testing.assert_array_equal(logits, reference.integers.numpy())
    return export, logits


def test_lenet5_is_bit_exact(tmp_path):
    require_gcc()
    torch.manual_seed(0)
    images = torch.randn(48, 1, 28, 28)
    qmodel = quantize(lenet5().eval(), images, QuantConfig())
    export, _ = _check_bit_exact(qmodel, images[:32], tmp_path, (1, 28, 28))
    assert export.weight_bytes == sum(s.bytes for s in export.layers)
    assert export.weight_bytes >= 61_706  # every weight and bias, at least a byte each
    sizes = flash_and_ram(export, tmp_path / "build")
    assert sizes["flash_bytes"] >= export.weight_bytes
    assert sizes["ram_bytes"] >= export.scratch_bytes > 0
    assert images_per_second(export, quantize_input(images[:4], export), tmp_path / "b2") > 0
    scalar = ("-fno-tree-vectorize",)  # extra flags reach gcc (a bad one fails the build)
    assert images_per_second(export, quantize_input(images[:4], export), tmp_path, cflags=scalar)
    with pytest.raises(RuntimeError, match="no-such-flag"):
        images_per_second(
            export, quantize_input(images[:4], export), tmp_path, cflags=("-fno-such-flag",)
        )
    header = export.header.read_text()
    assert "int model_run(const model_input_t *input, model_logit_t *logits);" in header
    assert f"#define MODEL_SCRATCH_BYTES {export.scratch_bytes}" in header


def test_resnet20_is_bit_exact_and_reuses_scratch(tmp_path):
    require_gcc()
    torch.manual_seed(1)
    images = torch.randn(64, 3, 32, 32)
    qmodel = quantize(_randomise_batch_norm(resnet20()), images, QuantConfig())
    export, _ = _check_bit_exact(qmodel, images[:32], tmp_path, (3, 32, 32))
    # three 16x32x32 int8 tensors are alive at once in a residual block, and no more
    assert export.scratch_bytes == 3 * 16 * 32 * 32
    assert export.scratch_bytes < export.activation_bytes / 4
    assert export.input_ctype == "int8_t" and export.logits_ctype == "int32_t"


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(weights=4),  # packed 4-bit indices + codebooks
        QuantConfig(weights=12, activations=12, bias=24, accumulator=24),  # int16, saturation
        QuantConfig(accumulator=12),  # saturation almost everywhere
        QuantConfig(weights=16, activations=16, bias=32, accumulator=48),  # int64 sums, logits
    ],
    ids=["w4", "w12a12acc24", "acc12", "w16a16acc48"],
)
def test_branchy_model_is_bit_exact(tmp_path, config):
    require_gcc()
    torch.manual_seed(2)
    images = torch.randn(40, 3, 16, 16)
    qmodel = quantize(_randomise_batch_norm(Branchy()), images, config)
    export, _ = _check_bit_exact(qmodel, images[:32], tmp_path, (3, 16, 16))
    if config.weights == 4:
        assert all(s.index_bits in (1, 2, 4) for s in export.layers)
        dense = sum(s.values + 2 * (s.bytes > s.values) for s in export.layers)
        assert export.weight_bytes < dense
    if config.activations > 8:
        assert export.input_ctype == "int16_t"
        assert "static int16_t ns_scratch16" in export.source.read_text()
    if config.accumulator == 48:
        assert export.logits_ctype == "int64_t" and "int64_t acc" in export.source.read_text()


def test_saturation_is_exercised():
    # the acc12 case above only tests something if the integer path really saturates
    torch.manual_seed(2)
    images = torch.randn(40, 3, 16, 16)
    config = QuantConfig(accumulator=12)
    qmodel = quantize(_randomise_batch_norm(Branchy()), images, config)
    assert sum(IntegerModel(qmodel).run(images[:32]).overflows.values()) > 0


@pytest.mark.parametrize("width", [0.5, pytest.param(1.0, marks=pytest.mark.slow)])
def test_mobilenet_v2_is_bit_exact(tmp_path, width):
    # depthwise convolutions, ReLU6 fused into the quantizers, residual adds, global pooling
    require_gcc()
    torch.manual_seed(3)
    images = torch.randn(48, 3, 32, 32)
    model = _randomise_batch_norm(mobilenet_v2(input_size=32, width=width))
    qmodel = quantize(model, images, QuantConfig())
    _check_bit_exact(qmodel, images[:32], tmp_path, (3, 32, 32))


class WithSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.softmax(self.conv(x), 1), 1))


def test_unsupported_op_is_named(tmp_path):
    images = torch.randn(8, 1, 8, 8)
    qmodel = quantize(WithSoftmax().eval(), images, QuantConfig(calibration_images=8))
    with pytest.raises(UnsupportedLayerError, match=r"softmax \(softmax\)"):
        export_c(qmodel, tmp_path, (1, 8, 8))
    assert not (tmp_path / "model.c").exists()


def test_float_layer_is_named(tmp_path):
    images = torch.randn(8, 1, 8, 8)
    config = QuantConfig(calibration_images=8, float_layers=("fc",))
    qmodel = quantize(WithSoftmax().eval(), images, config)
    with pytest.raises(UnsupportedLayerError, match=r"fc \(left in float"):
        export_c(qmodel, tmp_path, (1, 8, 8))


def test_rounding_helpers_floor_negative_numbers(tmp_path):
    # C99 leaves >> of a negative number to the implementation and / truncates: the helpers
    # must floor like Python's >> and // (netshrink.quant.fixed.requantize) on every sign, and
    # round ties to even where asked (ONNX Runtime's rule)
    require_gcc()
    rng = np.random.default_rng(0)
    values = [0, 1, -1, 2, -2, 3, -3, 7, -7, 8, -8, 9, -9, (1 << 62) - 1, -(1 << 62)]
    values += rng.integers(-(1 << 40), 1 << 40, 200).tolist()
    cases = [(v, s) for v in values for s in (1, 2, 3, 7, 31)]
    divisions = [(v, d) for v in values for d in (1, 2, 9, 18, 98, 1 << 20)]
    program = tmp_path / "helpers.c"
    program.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        + _HELPERS["ns_shr"]
        + _HELPERS["ns_shr_even"]
        + _HELPERS["ns_floordiv"]
        + "int main(void)\n{\n"
        + "".join(
            f'    printf("%lld\\n", (long long)ns_shr(INT64_C({v}), {s}));\n' for v, s in cases
        )
        + "".join(
            f'    printf("%lld\\n", (long long)ns_shr_even(INT64_C({v}), {s}));\n' for v, s in cases
        )
        + "".join(
            f'    printf("%lld\\n", (long long)ns_floordiv(INT64_C({v}), {d}));\n'
            for v, d in divisions
        )
        + "    return 0;\n}\n"
    )
    binary = tmp_path / "helpers"
    subprocess.run(["gcc", *CFLAGS, str(program), "-o", str(binary)], check=True)
    out = [
        int(line)
        for line in subprocess.run([binary], capture_output=True, text=True).stdout.split()
    ]
    assert out == (
        [v >> s for v, s in cases]
        + [_round_half_even(v, 1 << s) for v, s in cases]
        + [v // d for v, d in divisions]
    )


def _round_half_even(a: int, b: int) -> int:
    q, r = divmod(a, b)
    return q + 1 if 2 * r > b or (2 * r == b and q % 2) else q


def test_export_is_deterministic(tmp_path):
    torch.manual_seed(4)
    images = torch.randn(16, 3, 16, 16)
    qmodel = quantize(_randomise_batch_norm(Branchy()), images, QuantConfig(weights=4))
    first = export_c(qmodel, tmp_path / "a", (3, 16, 16))
    second = export_c(qmodel, tmp_path / "b", (3, 16, 16))
    assert first.source.read_bytes() == second.source.read_bytes()
    assert first.header.read_bytes() == second.header.read_bytes()


def test_a_spatial_mean_is_bit_exact(tmp_path):
    require_gcc()
    torch.manual_seed(0)
    images = torch.randn(16, 3, 10, 10)
    _check_bit_exact(quantize(MeanHead().eval(), images), images, tmp_path, (3, 10, 10))


def test_gates_and_lookup_tables_are_bit_exact(tmp_path):
    """Squeeze-and-excitation products (broadcast over the maps) and element-wise functions
    (SiLU, sigmoid, hard-swish, hard-sigmoid, tanh, GELU) as tables indexed by the input."""
    require_gcc()
    torch.manual_seed(0)
    images = torch.randn(32, 3, 12, 12)
    for bits in (8, 6):
        qmodel = quantize(Gates().eval(), images, QuantConfig(weights=bits, activations=bits))
        _check_bit_exact(qmodel, images, tmp_path / str(bits), (3, 12, 12))


# Layer styles of networks written outside the zoo (tests/helpers.py), each with the side of
# the images it runs on.
OUTSIDE_STYLES = {
    # CBAM's gates: max and mean over the channels, a max over each map
    "channel-reductions": (Attention, 12),
    # an option-A ResNet shortcut (F.pad of new channels) and spatial pads, one negative
    "zero-padding": (OptionA, 12),
    # a channel shuffle (view / transpose / view), a chunk and a channel slice: gathers
    "shuffles": (ShapeOps, 12),
    # padding, nearest upsampling, pixel shuffles, a flip (through a table of sources), clamps
    "copies-and-clamps": (Copies, 12),
    # TensorFlow's 'SAME' padding from x.size() (odd sides: the extra row and column at the end)
    "same-padding": (SamePad, 11),
    # timm's Conv2dSame (its forward pads from the input's size, then calls F.conv2d)
    "conv2d-same": (TfSame, 11),
    # Fixup's scalar parameters and a per-channel buffer (const arrays, broadcast), a difference
    "constants": (Fixup, 12),
}


@pytest.mark.parametrize("style", OUTSIDE_STYLES)
def test_layer_styles_from_outside_the_zoo_are_bit_exact(style, tmp_path):
    require_gcc()
    make, side = OUTSIDE_STYLES[style]
    torch.manual_seed(0)
    images = torch.randn(16, 3, side, side)
    _check_bit_exact(quantize(make().eval(), images), images, tmp_path, (3, side, side))


@pytest.mark.parametrize("case", UNEVEN_POOLS)
def test_average_pools_with_uneven_windows_are_bit_exact(case, tmp_path):
    """ceil mode, padding not counted, adaptive windows that do not tile the input: each
    output divided by its own window's count, read from a table."""
    require_gcc()
    torch.manual_seed(0)
    model, side = uneven_pool_net(case)
    images = torch.randn(16, 3, side, side)
    _check_bit_exact(quantize(model, images), images, tmp_path, (3, side, side))
