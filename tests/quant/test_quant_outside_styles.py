"""Architectures as users write them, outside netshrink's zoo: an op that returns a tuple (topk,
var_mean) quantizes at the float part it picks, never at the tuple or at indices (CBAM's
`torch.max(x, 1)[0]` keeps its grid and needs no quantizer); a
forward that makes Python numbers from tensor sizes (ShuffleNetV2's split, MixNet's zip over
torch.split) folds, quantizes and rebuilds from a file, its graph still following the batch size;
and what stays untraceable is refused with the cause and the method the user called."""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from helpers import randomize_batchnorms
from netshrink.codec import pack, unpack
from netshrink.errors import UnsupportedLayerError
from netshrink.fold import fold_batchnorm
from netshrink.graph import trace
from netshrink.prune.channel_graph import analyze_channels
from netshrink.quant import IntegerModel, fixed_point_formats, quantize


def _images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _through_a_file(qmodel, make, tmp_path):
    return unpack(pack(qmodel, tmp_path / "m.nsk", input_shape=(3, 8, 8), num_classes=10), make())


class SpatialGate(nn.Module):
    """CBAM's spatial attention: the channel max (a (values, indices) pair) gates the maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x * torch.sigmoid(self.gate(torch.max(x, 1)[0].unsqueeze(1)))
        return self.fc(x.mean((2, 3)))


class ManyTuples(nn.Module):
    """min / .values / topk / sort (indices unused) / var_mean / unbind, and a boolean mask."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(6, 1, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        low = torch.min(x, 1, keepdim=True)[0]
        high = x.max(dim=1, keepdim=True).values
        top = torch.topk(x, 2, 1)[0].sum(1, keepdim=True)
        ordered, _ = x.sort(1)
        var, mean = torch.var_mean(x, 1, keepdim=True)
        first = torch.unbind(x, 1)[0].unsqueeze(1)
        mask = (x > 0).float().mean(1, keepdim=True)
        g = torch.cat([low, high, top, ordered[:, :1], var, mean], 1) + first * mask
        return self.fc((x * torch.sigmoid(self.gate(g))).mean((2, 3)))


def test_a_channel_max_keeps_its_grid_and_runs_on_integers(tmp_path):
    torch.manual_seed(0)
    model, x = SpatialGate().eval(), _images()
    qmodel = quantize(model, x)  # was: ConfigError blaming the calibration data
    quantizers = fixed_point_formats(qmodel).activations
    # the max of values on one grid is on it: no quantizer on the tuple nor on its values
    assert "getitem_quant" not in quantizers and "max_1_quant" not in quantizers
    with torch.no_grad():
        fake, floats = qmodel(x), model(x)
    assert torch.corrcoef(torch.stack([fake.flatten(), floats.flatten()]))[0, 1] > 0.95
    with torch.no_grad():
        assert torch.equal(_through_a_file(qmodel, SpatialGate, tmp_path)(x), fake)
    assert torch.equal(IntegerModel(qmodel).run(x).logits, fake.double())


def test_indices_and_masks_get_no_quantizer_and_the_file_rebuilds_the_same(tmp_path):
    torch.manual_seed(0)
    model, x = ManyTuples().eval(), _images()
    qmodel = quantize(model, x)
    graph = {n.name: n for n in qmodel.graph.nodes}
    quantized = {n.args[0].name for n in qmodel.graph.nodes if str(n.target).endswith("_quant")}
    for tuple_op in ("min_1", "max_1", "topk", "sort", "var_mean", "unbind"):
        assert tuple_op in graph and tuple_op not in quantized
    assert "gt" in graph and "gt" not in quantized  # a boolean mask: no grid
    assert "float_1" in quantized  # the mask made float
    assert "getitem_2" in quantized and "getattr_1" not in quantized  # topk's; .values of a max
    with torch.no_grad():
        assert torch.equal(_through_a_file(qmodel, ManyTuples, tmp_path)(x), qmodel(x))


def _count_above_zero(x):
    return (x > 0).sum(1, keepdim=True)


torch.fx.wrap("_count_above_zero")  # an op the plan does not know, with an integer output


def test_an_unknown_op_with_an_integer_output_is_refused_by_name_not_blamed_on_the_data():
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return x.mean((2, 3)) * _count_above_zero(x).float().mean((2, 3))

    with pytest.raises(UnsupportedLayerError, match=r"_count_above_zero.*torch.int64 values"):
        quantize(Counts().eval(), _images(4))


class SplitHalves(nn.Module):
    """pytorch-cifar ShuffleNetV2's SplitBlock: the split point is a Python int of a size; the
    head flattens with x.size(0), which must keep following the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        c = int(x.size(1) * 0.5)
        x = torch.cat([x[:, :c], F.relu(x[:, c:])], 1)
        return self.fc(F.adaptive_avg_pool2d(x, 4).view(x.size(0), -1))


class MixConv(nn.Module):
    """MixNet's MixConv: a zip over the parts of torch.split, one kernel size each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.ModuleList(
            [nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 5, padding=2, groups=4)]
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = torch.cat([conv(t) for conv, t in zip(self.dw, torch.split(x, [4, 4], 1))], 1)
        return self.fc(x.mean((2, 3)))


def _model(make):
    torch.manual_seed(0)
    return randomize_batchnorms(make())


@pytest.mark.parametrize("make", [SplitHalves, MixConv])
def test_a_forward_with_numbers_from_sizes_traces_for_any_batch_size(make):
    model = _model(make)
    with pytest.raises(Exception):  # noqa: B017 - plain symbolic tracing cannot
        fx.symbolic_trace(model)
    graph_module = trace(model, "a test")
    for n in (1, 5):
        x = _images(n)
        with torch.no_grad():
            assert torch.equal(graph_module(x), model(x))


def test_the_batch_dimension_stays_a_graph_op():
    graph_module = trace(_model(SplitHalves), "a test")
    sizes = [n for n in graph_module.graph.nodes if n.target == "size"]
    assert [n.args for n in sizes] == [(sizes[0].args[0], 0)]  # x.size(0): read while it runs
    assert all(n.target != "size" or n.args[1] == 0 for n in graph_module.graph.nodes)


@pytest.mark.parametrize("make", [SplitHalves, MixConv])
def test_a_forward_with_numbers_from_sizes_folds(make):
    model = _model(make)
    folded = fold_batchnorm(_model(make))  # was: UnsupportedLayerError
    assert isinstance(folded.bn, nn.Identity)
    for n in (1, 5):
        x = _images(n)
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("make", [SplitHalves, MixConv])
def test_a_forward_with_numbers_from_sizes_quantizes_and_rebuilds(make, tmp_path):
    model, x = _model(make), _images()
    qmodel = quantize(model, x)
    out = IntegerModel(qmodel).run(x)
    with torch.no_grad():
        fake, floats = qmodel(x), model(x)
        assert torch.equal(torch.cat([qmodel(x[:1]), qmodel(x[1:6])]), fake[:6])  # batches 1, 5
        assert torch.equal(_through_a_file(qmodel, make, tmp_path)(x), fake)
    assert out.overflows == {} and torch.equal(out.logits, fake.double())
    assert torch.corrcoef(torch.stack([fake.flatten(), floats.flatten()]))[0, 1] > 0.95


class OddSplit(SplitHalves):
    """SplitHalves with a head for one image size only, 20 x 44 (a flatten to a fixed Linear),
    which no side that tracing guesses from the first layer fits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * 20 * 44, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        c = int(x.size(1) * 0.5)
        return self.fc(torch.cat([x[:, :c], F.relu(x[:, c:])], 1).flatten(1))


def test_the_methods_trace_a_forward_that_reads_sizes_on_the_callers_input_shape():
    model = _model(OddSplit)
    with pytest.raises(UnsupportedLayerError, match="no example input"):
        trace(model, "a test")  # no shape to read the numbers off
    x = torch.randn(8, 3, 20, 44, generator=torch.Generator().manual_seed(1))
    qmodel = quantize(model, x)  # folds and traces on the calibration images' shape
    with torch.no_grad():
        assert torch.equal(IntegerModel(qmodel).run(x).logits, qmodel(x).double())
    space = analyze_channels(model, (3, 20, 44)).space_of("conv")
    assert space.locked_by  # the slice at a number read off the size keeps the channels


class PerImage(nn.Module):
    def forward(self, x):
        return torch.stack([x[i] for i in range(x.size(0))])  # a loop over the batch


class DataGate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


@pytest.mark.parametrize(
    ("gate", "cause"),
    [
        (PerImage, r"range\(\) needs the value of size .* changes with the batch size"),
        (DataGate, r"condition .* needs the value of gt .* computed from tensor values"),
    ],
)
def test_what_stays_untraceable_is_refused_with_its_cause_and_the_method_called(gate, cause):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), gate(), nn.Flatten())
    with pytest.raises(UnsupportedLayerError, match=f"^batch-norm folding .*module '2': .*{cause}"):
        fold_batchnorm(model.eval())
    # quantize folds first: its message starts with the method the user called
    with pytest.raises(UnsupportedLayerError, match=f"^fixed-point quantization folds .*{cause}"):
        quantize(model.eval(), _images(4))


class TrainingOnly(nn.Module):
    """Dropout written with the module's mode (timm heads) and stochastic depth (EfficientNet's
    drop_connect): what they do depends on `self.training` when the forward is traced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        y = self.conv2(x)
        if self.training:
            y = y * torch.empty(y.shape[0], 1, 1, 1).bernoulli_(0.8) / 0.8
        x = F.relu(x + y).mean((2, 3))
        return self.fc(F.dropout(x, 0.5, training=self.training))


def test_a_forward_that_reads_its_mode_is_rebuilt_as_it_deploys(tmp_path):
    qmodel = quantize(TrainingOnly().eval(), _images())
    x = _images(5, seed=2)
    fresh = TrainingOnly()  # a file's model is rebuilt on a fresh model, in training mode
    rebuilt = _through_a_file(qmodel, lambda: fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qmodel(x))
    assert fresh.training  # tracing left the user's mode as it was


class ChannelAttention(nn.Module):
    """A softmax over channels weighting the maps: an op the integer path and C lack."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return x * torch.softmax(self.conv(x), 1)


def test_an_op_the_integer_path_lacks_is_named_with_the_module_that_calls_it(tmp_path):
    from netshrink.export.c import export_c

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ChannelAttention(), nn.Flatten())
    qmodel = quantize(model.eval(), _images())
    with pytest.raises(UnsupportedLayerError, match=r"softmax \(softmax in 2\)"):
        IntegerModel(qmodel)
    with pytest.raises(UnsupportedLayerError, match=r"softmax \(softmax in 2\)"):
        export_c(qmodel, tmp_path, (3, 8, 8))
