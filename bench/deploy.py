"""Deployment benchmark: ONNX Runtime fp32 vs int8, filter pruning through ONNX Runtime, the C
export's flash, RAM, speed and bit-exactness, and what the compressed recipes deploy as.

    python bench/deploy.py [--cases ort filters c compressed] [--recipes NAME ...]
                           [--ort-models vgg_small resnet20]

Cases:

- ort: ONNX Runtime latency, fp32 vs the int8 QDQ export of the 8-bit fixed-point model, at
  batch 1 and 64 (the file as exported by default, uint8 x uint8, and with int8 weights:
  `integers="int8"`, faster where ONNX Runtime has VNNI, saturating without it), for the small
  VGG (trained baseline) and ResNet-20 (random weights: there is no ResNet-20 baseline on
  Fashion-MNIST, and latency does not depend on the values);
- filters: the small VGG with half its MACs removed by filter pruning (no retraining: latency
  only) against the dense one, ONNX Runtime fp32: the latency ratio beside the MACs ratio;
- c: the C export of the pruned Caffe LeNet-5 (bench/pipeline.py's recipe, then 8-bit fixed
  point) and of the 8-bit small VGG: flash (`size` of the object), RAM (scratch), images/s at
  batch 1 on one core, and the share of test images whose logits equal the integer path's;
- compressed (the deployment issue's table): the Deep Compression recipes for LeNet-300-100 and
  the Caffe LeNet-5 and Kim et al.'s hierarchical recipe for the small VGG, run by
  netshrink.pipeline.run_recipe with C and int8 exports, then per model: the .nsk bytes; the C
  code as exported (each layer's smallest form: sparse where pruned) against the same model
  stored dense: flash and RAM (host gcc -O2 and arm-none-eabi-gcc for a Cortex-M4), images/s at
  batch 1 on one core, bit-exactness on the whole test split, the logits of an emulated
  Cortex-M3 (qemu mps2-an385) on 200 test images; the int8 ONNX file beside ONNX Runtime's own
  quantize_static of the float model before fixed point (and its fp32 ONNX), bytes, images/s at
  batch 1 on one thread, top-1.

Writes bench/results/deploy.json (ort, filters, c) and bench/results/deploy_compressed.json, and
their sections of docs/benchmarks.md; a run of some cases (or `--ort-models`) keeps the published
rows of the others.
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import merge_published, publish  # noqa: E402
from deploy_compressed import (  # noqa: E402
    COMPRESSED_COLUMNS,
    COMPRESSED_NOTES,
    compressed_rows,
)
from deploy_compressed import RECIPES as COMPRESSED_RECIPES  # noqa: E402
from netshrink.data import DataConfig, load_data  # noqa: E402
from netshrink.export.c import (  # noqa: E402
    build_and_run,
    export_c,
    flash_and_ram,
    images_per_second,
    quantize_input,
)
from netshrink.export.onnx import export_onnx, onnx_session  # noqa: E402
from netshrink.export.qdq import export_onnx_int8  # noqa: E402
from netshrink.measure import count_macs  # noqa: E402
from netshrink.models import ModelSpec, build_model  # noqa: E402
from netshrink.prune.filters import PruneFiltersConfig, prune_filters  # noqa: E402
from netshrink.quant import IntegerModel, QuantConfig, quantize  # noqa: E402
from pipeline import baseline, pruned_baseline  # noqa: E402

COLUMNS = [
    "case",
    "model",
    "batch",
    "ms fp32",
    "ms int8 / pruned",
    "ms int8, int8 weights",
    "speed-up",
    "MACs ratio",
    "flash B",
    "RAM B",
    "images/s",
    "bit-exact",
    "target",
    "meets target",
]
RUNS = 30


def ort_ms(path: Path, input_shape, batch: int) -> float:
    """Median wall time of one ONNX Runtime run (2 threads) at `batch`, in milliseconds."""
    session = onnx_session(path, threads=2)
    feed = {"input": np.random.default_rng(0).standard_normal((batch, *input_shape), np.float32)}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cpu_description() -> str:
    """The CPU's model name and whether it has VNNI (ONNX Runtime's int8 weights run faster
    with it and saturate without it on x86)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    vnni = any(flag in info.split() for flag in ("avx512_vnni", "avx_vnni"))
    return f"{name}, {'with' if vnni else 'without'} VNNI"


ORT_MODELS = {"vgg_small": "small VGG", "resnet20": "ResNet-20 (random weights)"}


def ort_model(name: str):
    """(model, data) for the ort case: the small VGG's trained baseline, or ResNet-20 with
    random weights on Fashion-MNIST's shapes (its calibration images)."""
    if name == "vgg_small":
        model, data, _ = baseline("vgg_small")
        return model, data
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="resnet20"), num_classes=10, in_channels=1, input_size=28)
    return model.eval(), load_data(DataConfig(source="fashion-mnist"))


def ort_rows(work: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        model, data = ort_model(name)
        label = ORT_MODELS[name]
        qmodel = quantize(model, data, QuantConfig())
        fp32 = export_onnx(model, work / "fp32.onnx", data.input_shape)
        int8 = export_onnx_int8(qmodel, work / "int8.onnx", data.input_shape)
        signed = export_onnx_int8(qmodel, work / "s8.onnx", data.input_shape, integers="int8")
        for batch in (1, 64):
            a, b = ort_ms(fp32, data.input_shape, batch), ort_ms(int8, data.input_shape, batch)
            rows.append(
                {
                    "case": "ORT int8 QDQ vs fp32",
                    "model": label,
                    "batch": batch,
                    "ms fp32": a,
                    "ms int8 / pruned": b,
                    "ms int8, int8 weights": ort_ms(signed, data.input_shape, batch),
                    "speed-up": a / b,
                    "target": "reported (int8 expected faster batched)",
                    "meets target": a / b > 1 if batch > 1 else None,
                }
            )
    return rows


def filter_rows(work: Path) -> list[dict]:
    dense, data, _ = baseline("vgg_small")
    pruned = prune_filters(
        copy.deepcopy(dense), PruneFiltersConfig(target_macs=0.5), data.input_shape
    )
    macs = [sum(r.macs for r in count_macs(m, data.input_shape)) for m in (dense, pruned)]
    fp32 = export_onnx(dense, work / "dense.onnx", data.input_shape)
    slim = export_onnx(pruned, work / "pruned.onnx", data.input_shape)
    rows = []
    for batch in (1, 64):
        a, b = ort_ms(fp32, data.input_shape, batch), ort_ms(slim, data.input_shape, batch)
        rows.append(
            {
                "case": "filter-pruned vs dense, ORT fp32",
                "model": "small VGG, 50% MACs",
                "batch": batch,
                "ms fp32": a,
                "ms int8 / pruned": b,
                "speed-up": a / b,
                "MACs ratio": macs[0] / macs[1],
                "target": "latency ratio vs MACs ratio",
                "meets target": None,
            }
        )
    return rows


def c_rows(work: Path) -> list[dict]:
    _, caffe, caffe_data = pruned_baseline("lenet5_caffe")
    vgg, vgg_data, _ = baseline("vgg_small")
    rows = []
    for label, model, data in (
        ("Caffe LeNet-5, pruned + 8-bit", caffe, caffe_data),
        ("small VGG, 8-bit", vgg, vgg_data),
    ):
        qmodel = quantize(model, data, QuantConfig())
        export = export_c(qmodel, work / "c", data.input_shape)
        sizes = flash_and_ram(export, work)
        images = torch.cat([x for x, _ in data.loader("test", 500)])
        inputs = quantize_input(images, export)
        logits = build_and_run(export, inputs, work)
        integer = IntegerModel(qmodel)
        expected = torch.cat([integer.run(x).integers for x in images.split(500)]).numpy()
        same = float((logits == expected).all(axis=1).mean())
        rows.append(
            {
                "case": "C99 export (gcc -O2, 1 core, batch 1)",
                "model": label,
                "flash B": sizes["flash_bytes"],
                "RAM B": sizes["ram_bytes"],
                "images/s": round(images_per_second(export, inputs[:500], work), 1),
                "bit-exact": f"{same:.2%} of {len(images)}",
                "target": "100% bit-exact",
                "meets target": same == 1.0,
            }
        )
    return rows


def _case_order(part: tuple[str, str]) -> tuple[int, str]:
    """Published rows by case (ort, filters, c), then model."""
    case, model = part
    cases = ("ORT int8", "filter-pruned", "C99")
    return next((i for i, c in enumerate(cases) if case.startswith(c)), len(cases)), model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["ort", "filters", "c", "compressed"])
    parser.add_argument(
        "--recipes", nargs="+", default=None, help="the compressed case's recipes (default all)"
    )
    parser.add_argument(
        "--ort-models", nargs="+", choices=list(ORT_MODELS), default=list(ORT_MODELS),
        help="the ort case's models (default both)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if "ort" in args.cases:
            rows += ort_rows(work, args.ort_models)
        if "filters" in args.cases:
            rows += filter_rows(work)
        if "c" in args.cases:
            rows += c_rows(work)
        if rows:
            rows, earlier = merge_published(
                "deploy", rows, lambda row: (row["case"], row["model"]), _case_order
            )
            notes = (
                "ONNX Runtime: median of 30 runs, 2 threads, on this CPU: "
                f"{cpu_description()}. The c case stores every layer in its smallest form (a "
                "pruned layer sparse; 8-bit fixed point, no weight sharing here)." + earlier
            )
            publish("deploy", "Deployment (bench/deploy.py)", rows, COLUMNS, notes)
        if "compressed" in args.cases:
            compressed = compressed_rows(work, args.recipes)
            # a --recipes rerun keeps the other models' published rows
            labels = list(COMPRESSED_RECIPES)
            compressed, earlier = merge_published(
                "deploy_compressed", compressed, lambda row: row["model"], labels.index
            )
            publish(
                "deploy_compressed",
                "Deploying the compressed models (bench/deploy.py --cases compressed)",
                compressed,
                COMPRESSED_COLUMNS,
                COMPRESSED_NOTES + earlier,
            )


if __name__ == "__main__":
    main()
