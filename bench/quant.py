"""Fixed-point benchmark on Fashion-MNIST, against the cached baselines (bench/baselines.py).

    python bench/quant.py [--models lenet5 lenet5_caffe vgg_small] [--cases ptq auto qat]

Cases (the fixed-point issue's table), per model:

- ptq: 8-bit weights + 8-bit activations after training, no retraining, for each calibration
  method; beside it ONNX Runtime's own static int8 quantization (QDQ, per channel, MinMax) of
  the same model, the peer a user would pick; and the integer path against the float
  fixed-point model on the whole test split (identical logits, image by image);
- auto: the hybrid bit-width search with a 1 pt budget (measured on a validation subset), its
  mean weight bits, widest activation and the loss on the test split;
- qat: 4-bit weights and activations, post-training and after quantization-aware training.

Writes bench/results/quant.json and the quant section of docs/benchmarks.md.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.codec import packed_bytes  # noqa: E402
from netshrink.export.onnx import export_onnx, onnx_logits, onnx_session  # noqa: E402
from netshrink.measure import dense_bytes  # noqa: E402
from netshrink.quant import IntegerModel, QuantConfig, fixed_point_formats, quantize  # noqa: E402
from netshrink.quant.qat import QatConfig, train_quantized  # noqa: E402
from netshrink.quant.search import BitSearchConfig, search_bits  # noqa: E402
from netshrink.train import evaluate  # noqa: E402
from ort_int8 import ort_quantize_static  # noqa: E402
from pipeline import baseline  # noqa: E402

MODELS = ("lenet5", "lenet5_caffe", "vgg_small")
LABELS = {"lenet5": "LeNet-5", "lenet5_caffe": "Caffe LeNet-5", "vgg_small": "small VGG"}
METHODS = ("minmax", "percentile", "kl", "mse")
COLUMNS = [
    "model",
    "case",
    "top-1 fp32",
    "top-1",
    "loss pt",
    "weight bits",
    "act bits",
    "ratio",
    "identical",
    "target",
    "meets target",
    "seconds",
]


def _top1(model, data) -> float:
    return evaluate(model, data.loader("test", 500)).top1


@torch.no_grad()
def _identical(qmodel, data) -> str:
    integer, same, total = IntegerModel(qmodel), 0, 0
    for x, _ in data.loader("test", 500):
        same += int((integer.run(x).logits == qmodel(x).double()).all(dim=1).sum())
        total += len(x)
    return f"{same}/{total}"


def _bits(qmodel) -> tuple[float, int]:
    """(parameter-weighted mean weight bits, widest activation)."""
    formats = fixed_point_formats(qmodel)
    sizes = {n: qmodel.get_submodule(n).weight.numel() for n in formats.weights}
    mean = sum(formats.weights[n].bits * sizes[n] for n in sizes) / sum(sizes.values())
    return mean, max(spec.bits for spec in formats.activations.values())


def _row(name, case, fp32, qmodel, data, seconds, target, meets, *, top1=None) -> dict:
    top1 = _top1(qmodel, data) if top1 is None else top1
    mean, widest = _bits(qmodel)
    return {
        "model": LABELS[name],
        "case": case,
        "top-1 fp32": fp32,
        "top-1": top1,
        "loss pt": 100 * (fp32 - top1),
        "weight bits": round(mean, 2),
        "act bits": widest,
        "ratio": dense_bytes(qmodel) / len(packed_bytes(qmodel)),
        "identical": _identical(qmodel, data),
        "target": target,
        "meets target": meets(fp32, top1, mean, widest),
        "seconds": round(seconds, 1),
    }


def ptq_rows(name: str, model, data, fp32: float) -> list[dict]:
    rows = []
    for method in METHODS:
        start = time.perf_counter()
        qmodel = quantize(model, data, QuantConfig(calibrate=method))
        rows.append(
            _row(
                name,
                f"PTQ 8/8, {method}",
                fp32,
                qmodel,
                data,
                time.perf_counter() - start,
                "<= 0.3 pt",
                lambda f, t, m, w: 100 * (f - t) <= 0.3,
            )
        )
    rows.append(ort_row(name, model, data, fp32, rows[0]["top-1"]))
    return rows


def ort_row(name: str, model, data, fp32: float, netshrink_top1: float) -> dict:
    """ONNX Runtime's static int8 quantization of the same model, on the same test split."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        fp32_path = export_onnx(model, Path(work) / "model.onnx", data.input_shape)
        batches = [x.numpy() for x, _ in data.loader("train", 256, augment=False)][:4]
        int8_path = ort_quantize_static(fp32_path, Path(work) / "model.int8.onnx", batches)
        session = onnx_session(int8_path, threads=2)
        correct = seen = 0
        for x, y in data.loader("test", 500):
            logits = onnx_logits(session, x)  # a batch-1 file runs image by image
            correct += int((logits.argmax(1) == y.numpy()).sum())
            seen += len(y)
        size = int8_path.stat().st_size
    top1 = correct / seen
    return {
        "model": LABELS[name],
        "case": "ONNX Runtime quantize_static int8 (QDQ, per channel, MinMax)",
        "top-1 fp32": fp32,
        "top-1": top1,
        "loss pt": 100 * (fp32 - top1),
        "weight bits": 8,
        "act bits": 8,
        "ratio": dense_bytes(model) / size,
        "target": "netshrink 8/8 (minmax) >= this",
        "meets target": netshrink_top1 >= top1,
        "seconds": round(time.perf_counter() - start, 1),
    }


def auto_row(name: str, model, data, fp32: float) -> dict:
    start = time.perf_counter()
    result = search_bits(model, data, BitSearchConfig(budget=1.0), progress=False)
    row = _row(
        name,
        f"auto bits, 1 pt budget ({result.evaluations} evaluations; val loss {result.loss:.2f})",
        fp32,
        result.model,
        data,
        time.perf_counter() - start,
        "mean weight bits <= 5, act <= 8",
        lambda f, t, m, w: m <= 5 and w <= 8,
    )
    print("per-layer bits:", *(f"{r.name}={r.weight_bits}/{r.activation_bits}"
                                for r in result.rows))  # fmt: skip
    return row


def qat_rows(name: str, model, data, fp32: float, epochs: int) -> list[dict]:
    start = time.perf_counter()
    config = QatConfig()
    ptq = quantize(model, data, config.quant)
    rows = [
        _row(
            name,
            "PTQ 4/4 (no training)",
            fp32,
            ptq,
            data,
            time.perf_counter() - start,
            "-",
            lambda f, t, m, w: None,
        )
    ]
    fit = config.fit.model_copy(update={"epochs": epochs}) if epochs else config.fit
    start = time.perf_counter()
    qmodel, _ = train_quantized(model, data, config.model_copy(update={"fit": fit}), progress=False)
    rows.append(
        _row(
            name,
            f"QAT 4/4, {fit.epochs} epochs",
            fp32,
            qmodel,
            data,
            time.perf_counter() - start,
            "<= 1.5 pt",
            lambda f, t, m, w: 100 * (f - t) <= 1.5,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--cases", nargs="+", default=["ptq", "auto", "qat"])
    parser.add_argument("--qat-epochs", type=int, default=0, help="default: QatConfig's")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for name in args.models:
        model, data, _ = baseline(name)
        fp32 = _top1(model, data)
        if "ptq" in args.cases:
            rows += ptq_rows(name, model, data, fp32)
        if "auto" in args.cases:
            rows.append(auto_row(name, model, data, fp32))
        if "qat" in args.cases:
            rows += qat_rows(name, model, data, fp32, args.qat_epochs)
    notes = (
        "Top-1 on the 10,000 Fashion-MNIST test images. ratio: fp32 bytes over the bytes the "
        "weights need at their bits (ORT: over the int8 .onnx file). identical: test images "
        "whose integer-path logits equal the float fixed-point model's bit for bit. The search "
        "measures on the validation split; its test loss is the one shown. The ONNX Runtime peer "
        "scales each output channel freely (any real scale, a zero point); netshrink keeps one "
        "power-of-two scale per layer, which a device applies with shifts."
    )
    publish("quant", "Fixed point (bench/quant.py)", rows, COLUMNS, notes)


if __name__ == "__main__":
    main()
