"""The peers' pipelines that bench/peers.py measures, each as a user of that tool would write it.

Every pipeline returns a `Result`: the bytes of the file the tool writes (compressed with zip and
xz by the caller), the top-1 of what that file holds on the test split, and the seconds the
pipeline took (evaluation excluded). The peer libraries are imported inside their functions, so
this module imports where only PyTorch and ONNX Runtime are installed (netshrink's own venv).
"""

import copy
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn.utils import prune

from common import latency_ratio
from netshrink.export.onnx import export_onnx, onnx_logits, onnx_session
from netshrink.measure import count_macs
from netshrink.train import FitConfig, evaluate, fit
from ort_int8 import ort_quantize_static

TEST_BATCH = 500


@dataclass(frozen=True)
class Result:
    """What one pipeline made: the file's bytes, its top-1, seconds, for filter pruning the MACs
    removed and the dense / pruned latency ratio at batch 1 and 64 (one thread), and for
    netshrink's recipes the validation loss its front points are chosen by."""

    top1: float
    raw: bytes
    seconds: float
    macs_removed: float | None = None
    latency_ratio: dict[int, float] | None = None
    val_loss: float | None = None  # pt below the baseline on validation, where measured


class Timer:
    """Seconds spent inside `with timer:` blocks, summed (evaluation stays outside them)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start


def top1(model: nn.Module, data) -> float:
    return evaluate(model, data.loader("test", TEST_BATCH)).top1


def onnx_top1(path: Path, data) -> float:
    """Top-1 of the ONNX file at `path` under ONNX Runtime (1 thread), on the test split."""
    session, correct, seen = onnx_session(path, threads=1), 0, 0
    for x, y in data.loader("test", TEST_BATCH):
        logits = onnx_logits(session, x)  # a batch-1 file runs image by image
        correct += int((logits.argmax(1) == y.numpy()).sum())
        seen += len(y)
    return correct / seen


def saved(obj) -> bytes:
    """`torch.save(obj)` as bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def weight_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def torch_prune(model, data, sparsity: float, fit_config: FitConfig) -> tuple[nn.Module, float]:
    """PyTorch by hand: `global_unstructured` L1 pruning of every conv / linear weight to
    `sparsity`, fine-tuning with the masks on, then `prune.remove` to bake the zeros in."""
    model = copy.deepcopy(model)
    with Timer() as timer:
        layers = weight_layers(model)
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
        fit(model, data, fit_config, progress=False)
        for module, name in layers:
            prune.remove(module, name)
    return model.eval(), timer.seconds


def torch_fp32(model, data, seconds: float = 0.0) -> Result:
    """The fp32 state dict as `torch.save` writes it."""
    with Timer() as timer:
        raw = saved(model.state_dict())
    return Result(top1(model, data), raw, seconds + timer.seconds)


def torch_ao_int8(model, data, calibration, seconds: float = 0.0) -> Result:
    """torch.ao.quantization post-training static int8 (FX graph mode, the x86 backend's default
    qconfig: per-channel weights, histogram-calibrated activations), state dict saved."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with Timer() as timer:
        mapping = get_default_qconfig_mapping("x86")
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (calibration[0][:1],))
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        quantized = convert_fx(prepared)
        raw = saved(quantized.state_dict())
    return Result(top1(quantized, data), raw, seconds + timer.seconds)


def ort_int8(model, data, calibration, seconds: float = 0.0) -> Result:
    """ONNX Runtime static int8 (QDQ, per-channel int8 weights, uint8 activations, MinMax) of
    the fp32 ONNX export, as bench/ort_int8.py runs it."""
    with tempfile.TemporaryDirectory() as work:
        with Timer() as timer:
            fp32 = export_onnx(model, Path(work) / "fp32.onnx", data.input_shape)
            int8 = Path(work) / "int8.onnx"
            ort_quantize_static(fp32, int8, [x.numpy() for x in calibration])
            raw = int8.read_bytes()
        accuracy = onnx_top1(int8, data)
    return Result(accuracy, raw, seconds + timer.seconds)


def nncf_int8(model, data, calibration) -> Result:
    """NNCF post-training int8 (`nncf.quantize`, default preset: symmetric weights and
    activations, fast bias correction) on the fp32 ONNX export: its ONNX backend writes int8
    weights, which its PyTorch backend keeps as fp32 with fake-quantize modules."""
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as work:
        with Timer() as timer:
            fp32 = export_onnx(model, Path(work) / "fp32.onnx", data.input_shape)
            graph = onnx.load(str(fp32))
            name = graph.graph.input[0].name
            batches = [x.numpy() for x in calibration]
            dataset = nncf.Dataset(batches, lambda x: {name: x})
            quantized = nncf.quantize(graph, dataset, subset_size=len(batches))
            int8 = Path(work) / "int8.onnx"
            onnx.save(quantized, str(int8))
            raw = int8.read_bytes()
        accuracy = onnx_top1(int8, data)
    return Result(accuracy, raw, timer.seconds)


def brevitas_int8(model, data, calibration) -> Result:
    """Brevitas post-training int8: `preprocess_for_quantize` + `quantize` (its defaults: int8
    per-tensor weights and activations), calibrated in `calibration_mode`, exported as QCDQ
    ONNX (int8 weights); top-1 of the exported file under ONNX Runtime."""
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import preprocess_for_quantize, quantize

    with Timer() as timer:
        quantized = quantize(preprocess_for_quantize(copy.deepcopy(model).eval())).eval()
        with torch.no_grad(), calibration_mode(quantized):
            for x in calibration:
                quantized(x)
    return _brevitas_file(quantized, data, calibration, timer.seconds)


def brevitas_qat(pruned, data, calibration, bits: int, fit_config: FitConfig,
                 seconds: float = 0.0) -> Result:  # fmt: skip
    """Brevitas low-bit quantization-aware training of a pruned model, as a capable user would
    run it: `quantize` with every conv / linear weight on `bits` bits (per output channel,
    narrow-range signed; activations on its default 8 bits), the pruned zeros kept by masking
    their gradients, trained with `fit_config`, exported as QCDQ ONNX (the low-bit weights held
    in int8 containers: zip / xz take the slack); top-1 of the file under ONNX Runtime."""
    from brevitas.graph.quantize import COMPUTE_LAYER_MAP, preprocess_for_quantize, quantize
    from brevitas.quant import Int8WeightPerChannelFloat

    layer_map = dict(COMPUTE_LAYER_MAP)
    for kind in (nn.Conv2d, nn.Linear):
        layer, kwargs = layer_map[kind]
        kwargs = {**kwargs, "weight_quant": Int8WeightPerChannelFloat, "weight_bit_width": bits}
        layer_map[kind] = (layer, kwargs)
    with Timer() as timer:
        model = preprocess_for_quantize(copy.deepcopy(pruned).eval())
        quantized = quantize(model, compute_layer_map=layer_map)
        for module in quantized.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                mask = (module.weight != 0).to(module.weight.dtype)
                module.weight.register_hook(lambda grad, mask=mask: grad * mask)
        fit(quantized, data, fit_config, progress=False)
    return _brevitas_file(quantized.eval(), data, calibration, seconds + timer.seconds)


def _brevitas_file(quantized, data, calibration, seconds: float) -> Result:
    """A Brevitas model exported as QCDQ ONNX: the file's bytes and its top-1 under ORT."""
    from brevitas.export import export_onnx_qcdq

    with tempfile.TemporaryDirectory() as work:
        with Timer() as timer:
            path = Path(work) / "model.onnx"
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
            export_onnx_qcdq(quantized, args=calibration[0][:1], export_path=str(path),
                             opset_version=17, dynamo=False, input_names=["input"],
                             output_names=["logits"], dynamic_axes=axes)  # fmt: skip
            raw = path.read_bytes()
        accuracy = onnx_top1(path, data)
    return Result(accuracy, raw, seconds + timer.seconds)


def torchao_int8(model, data) -> Result:
    """torchao `quantize_(model, Int8DynamicActivationInt8WeightConfig())`: int8 weights and
    per-token dynamic int8 activations; torchao's `quantize_` rewrites nn.Linear only."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    with Timer() as timer:
        quantized = copy.deepcopy(model).eval()
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
        raw = saved(quantized.state_dict())
    return Result(top1(quantized, data), raw, timer.seconds)


def macs(model, input_shape) -> int:
    return sum(row.macs for row in count_macs(model, input_shape))


LATENCY_BATCHES = (1, 64)


def filter_result(dense, pruned, data, raw: bytes, seconds: float) -> Result:
    """A filter-pruned model's Result: top-1, MACs removed and the latency ratios against the
    dense model, on one thread (a device's core; two threads on this 2-core machine measure
    contention)."""
    shape = data.input_shape
    removed = 1 - macs(pruned, shape) / macs(dense, shape)
    ratios = {b: latency_ratio(dense, pruned, shape, batch_size=b) for b in LATENCY_BATCHES}
    return Result(top1(pruned, data), raw, seconds, removed, ratios)


def tp_filters(model, data, amount: float, fit_config: FitConfig) -> Result:
    """Torch-Pruning: `MetaPruner` with L1 `MagnitudeImportance` removes `amount` of every
    conv's filters (the classifier layers' outputs kept), then fine-tuning; saved with
    `tp.state_dict` (which records the pruned shapes)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    with Timer() as timer:
        example = torch.zeros(1, *data.input_shape)
        ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
        pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=amount, ignored_layers=ignored)  # fmt: skip
        pruner.step()
        fit(pruned, data, fit_config, progress=False)
        raw = saved(tp.state_dict(pruned))
    return filter_result(model, pruned.eval(), data, raw, timer.seconds)


def calibration_batches(data, batches: int = 4, size: int = 256) -> list[torch.Tensor]:
    """The same `batches` x `size` training images (no augmentation) for every PTQ tool."""
    out = []
    for x, _ in data.loader("train", size, augment=False, shuffle=False):
        out.append(x)
        if len(out) == batches:
            return out
    return out
