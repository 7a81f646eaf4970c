"""How far an int8 ONNX file agrees with the integer path it was exported from, and where not,
why: no export disagrees silently.

The int8 QDQ graph (netshrink.export.qdq) holds one QuantizeLinear / DequantizeLinear pair per
activation quantizer of the fixed-point model, under the quantizer's own name. `int8_agreement`
runs ONNX Runtime with every one of those values as an extra output, runs the integer path with
the same values captured (`IntegerModel.run(quantized=...)`), and compares them in graph order:
the first quantizer where they differ is where the two computations part, and what fed it (a
conv / linear layer, an average pool, an addition) says why. Where the integer path cannot run the
model (an op it lacks, left in float), the fake-quantized model, which computes the same values
where both run, stands in for it: the file is checked all the same.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import fx

from ..errors import UnsupportedLayerError
from ..quant.integer import IntegerModel
from ..quant.plan import node_kind
from ..quant.quantize import fixed_point_formats
from .onnx import onnx_logits, onnx_outputs, onnx_session

# Below this share of images with the same top-1 class, an export explains itself.
AGREEMENT_TARGET = 0.999

# Why values part after each kind of op, where they differ by one step of the format.
_ONE_STEP = {
    "layer": "rounding: one step apart, as where ONNX Runtime rounds a tie to even and the "
    "integer path rounds it up (or its float accumulation lands on the other side); quantize "
    "with ties='even' (--ties even) to round as ONNX Runtime does",
    "avg_pool": "average pool: ONNX Runtime divides in float before it rounds, the integer path "
    "rounds the exact integer quotient",
    "add": "addition: ONNX Runtime adds the dequantized values and rounds the sum once",
    "cat": "concatenation: the parts are requantized to one format differently",
    "input": "the input image: rounded to the first format differently",
}


@dataclass(frozen=True)
class Divergence:
    """The first activation quantizer whose values differ: its name, what fed it, the share of
    values that differ, the largest difference in steps of its format, and why."""

    quantizer: str
    after: str
    differing: float
    max_steps: float
    reason: str

    def describe(self) -> str:
        return (
            f"first differs at {self.quantizer} (after a {self.after}): {self.differing:.2%} of "
            f"its values, by up to {self.max_steps:g} step(s); {self.reason}"
        )


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement of the int8 ONNX file with `against` (the integer path, or the
    fake-quantized model where the integer path cannot run it) on `images` images, and the
    first divergence (None when every quantized value is equal)."""

    top1: float
    images: int
    first: Divergence | None
    against: str = "the integer path"

    def describe(self) -> str:
        line = f"top-1 agreement with {self.against} {self.top1:.2%} of {self.images} images"
        if self.first is not None and self.top1 < AGREEMENT_TARGET:
            line += f"; {self.first.describe()}"
        return line


def int8_agreement(qmodel, path: str | Path, images) -> Agreement:
    """Compare the int8 ONNX file at `path` with the integer path of `qmodel` on `images`: the
    top-1 classes of the file as it is, then, to place a difference, every quantizer's values
    from a second session that also outputs them. (Outputs in the middle can keep ONNX Runtime
    from fusing a layer into its int8 kernel; where that run agrees everywhere and the file does
    not, the divergence names the fused kernels.) `images`: a tensor of normalized images, or
    a re-iterable of batches with a length (read batch by batch). A file for a fixed batch
    size runs on slices of it (onnx_outputs)."""
    reference, against = _reference(qmodel)
    formats = fixed_point_formats(qmodel).activations
    plain = onnx_session(path)
    probed, names = _session_with_quantizers(Path(path), list(formats))
    same, steps, differ = 0, {}, {}
    for batch in images.split(256) if isinstance(images, torch.Tensor) else images:
        captured: dict = {}
        ours = reference.run(batch, quantized=captured).logits.argmax(1).numpy()
        same += int((onnx_logits(plain, batch).argmax(1) == ours).sum())
        theirs = dict(zip(names.values(), onnx_outputs(probed, batch)[1:], strict=True))
        for quantizer, tensor in names.items():
            step = 2.0 ** -formats[quantizer].frac
            gap = np.abs(captured[quantizer].double().numpy() - theirs[tensor]) / step
            steps[quantizer] = max(steps.get(quantizer, 0.0), float(gap.max(initial=0.0)))
            count, total = differ.get(quantizer, (0, 0))
            differ[quantizer] = (count + int((gap > 0.5).sum()), total + gap.size)
    top1 = same / len(images)
    first = _first_divergence(reference, names, steps, differ)
    if first is None and top1 < 1:
        first = Divergence(
            "the output", "fused int8 kernel", 1 - top1, 0.0,
            "every quantized value agrees when ONNX Runtime outputs them, so its fused int8 "
            "kernels (QLinearConv / QGemm / QLinearAveragePool) compute differently from their "
            "unfused form",
        )  # fmt: skip
    return Agreement(top1, len(images), first, against)


def _reference(qmodel):
    """The integer path of `qmodel` and its name, or where it cannot run the model, the
    fake-quantized model: the check then compares with what the model computes rather than
    failing, so that a file that disagrees still says so."""
    try:
        return IntegerModel(qmodel), "the integer path"
    except UnsupportedLayerError:
        return _FakeQuantized(qmodel), "the fake-quantized model"


@dataclass(frozen=True)
class _Output:
    logits: torch.Tensor


class _FakeQuantized:
    """The fake-quantized model with IntegerModel's `run(x, quantized=...)` and `input_kind`:
    each activation quantizer's output captured by a forward hook."""

    def __init__(self, qmodel: fx.GraphModule) -> None:
        self.model = qmodel
        self.modules = dict(qmodel.named_modules())
        self.formats = fixed_point_formats(qmodel)

    @torch.no_grad()
    def run(self, x: torch.Tensor, *, quantized: dict) -> _Output:
        def keep(name):
            return lambda module, inputs, output: quantized.__setitem__(name, output.detach())

        hooks = [self.modules[n].register_forward_hook(keep(n)) for n in self.formats.activations]
        was_training = self.model.training
        try:
            return _Output(self.model.eval()(x))
        finally:
            self.model.train(was_training)
            for hook in hooks:
                hook.remove()

    def input_kind(self, quantizer: str) -> str:
        """As IntegerModel.input_kind: what produced the value `quantizer` rounds."""
        node = next(n for n in self.model.graph.nodes if n.target == quantizer)
        source = node.args[0]
        while isinstance(source, fx.Node) and self._kind(source) in ("pass", "relu", "relu6"):
            source = source.args[0]
        return self._kind(source) if isinstance(source, fx.Node) else "other"

    def _kind(self, node: fx.Node) -> str:
        return node_kind(node, self.modules, self.formats.float_layers)


def _session_with_quantizers(
    path: Path, quantizers: list[str]
) -> tuple[ort.InferenceSession, dict[str, str]]:
    """An ONNX Runtime session on the file with each quantizer's dequantized value as an extra
    output; {quantizer: its tensor name}, in the order of `quantizers` that the file holds."""
    model = onnx.load(str(path))
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        for quantizer in quantizers:
            if node.name == f"/{quantizer}/DequantizeLinear":
                found[quantizer] = node.output[0]
    names = {q: found[q] for q in quantizers if q in found}
    for tensor in names.values():
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, names


def _first_divergence(reference, names, steps, differ) -> Divergence | None:
    for quantizer in names:  # graph order: the first that differs is where they part
        count, total = differ[quantizer]
        if not count:
            continue
        after = reference.input_kind(quantizer)
        if steps[quantizer] <= 1.0 + 1e-9:
            reason = _ONE_STEP.get(after, f"a {after} computed differently, by one step")
        else:
            reason = (
                f"the {after} is computed differently by ONNX Runtime (not a rounding tie: "
                "more than one step apart)"
            )
        return Divergence(quantizer, after, count / total, round(steps[quantizer], 3), reason)
    return None
