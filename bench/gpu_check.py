"""The GPU check: netshrink on a CUDA device against the CPU runs measured on the 2-core machine.

    python bench/gpu_check.py [--data fashion-mnist|fashion-mnist:DIR] [--device cuda]

Run it on a CUDA machine whenever one can be had (on a machine without one it says so and
writes nothing). Cases:

- deep-compression-lenet5: recipes/deep-compression-lenet5.yaml end to end with `device: cuda`,
  the baseline trained there too (a fresh cache): the packed file's top-1 against the CPU run's
  (bench/results/recipes.json; seed noise on LeNet-5 is about 1 pt), and the wall time;
- small VGG epoch: one epoch of the small VGG with its baseline's settings (augmented data) on
  the device, in float32 and in mixed precision, against the CPU's epoch
  (bench/results/baselines.json: train s / epochs);
- decoded on the CPU: the recipe's .nsk file decoded on the CPU gives the outputs of the model
  on the device (top-1 agreement and the largest logit difference on the test split; float
  reductions differ between devices, so the logits agree to rounding, not bit for bit).

Writes bench/results/gpu_check.json and the gpu_check section of docs/benchmarks.md.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, publish  # noqa: E402
from netshrink.baseline import BASELINES  # noqa: E402
from netshrink.codec import unpack  # noqa: E402
from netshrink.data import load_data  # noqa: E402
from netshrink.device import resolve_device  # noqa: E402
from netshrink.models import build_model  # noqa: E402
from netshrink.pipeline import run_recipe  # noqa: E402
from netshrink.recipe import load_recipe  # noqa: E402
from netshrink.train import fit  # noqa: E402

COLUMNS = ["case", "device", "measure", "value", "CPU here", "target", "meets target"]
RECIPE = "deep-compression-lenet5"


def _cpu_result(name: str, key: str, value: str) -> dict:
    rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
    return next(r for r in rows if r.get(key) == value)


def recipe_rows(device: torch.device, source: str) -> tuple[list[dict], object, object]:
    recipe = load_recipe(ROOT / "recipes" / f"{RECIPE}.yaml")
    data = recipe.data.model_copy(update={"source": source})
    recipe = recipe.model_copy(update={"data": data, "device": str(device)})
    cpu = _cpu_result("recipes", "recipe", RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_recipe(recipe, Path(tmp) / "run", cache_dir=Path(tmp) / "cache",
                            progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        top1 = result.measurements[-1].top1
        decoded_cpu = unpack(result.file)
    loss = 100 * abs(top1 - cpu["final top-1"])
    rows = [
        {"case": RECIPE, "device": str(device), "measure": "packed file top-1",
         "value": round(top1, 4), "CPU here": cpu["final top-1"], "target": "within 1 pt",
         "meets target": loss <= 1.0},
        {"case": RECIPE, "device": str(device), "measure": "wall s (baseline trained)",
         "value": round(seconds, 1), "CPU here": f"{cpu['wall s']} (cached baseline)",
         "target": "reported", "meets target": None},
    ]  # fmt: skip
    return rows, result.model, decoded_cpu


def decode_rows(device, on_device, decoded_cpu, data) -> list[dict]:
    same = total = 0
    largest = 0.0
    with torch.inference_mode():
        for x, _ in data.loader("test", 500):
            a, b = on_device(x.to(device)).cpu(), decoded_cpu(x)
            same += int((a.argmax(1) == b.argmax(1)).sum())
            total += len(x)
            largest = max(largest, float((a - b).abs().max()))
    return [
        {"case": "decoded on the CPU", "device": str(device), "measure": "top-1 agreement",
         "value": round(same / total, 4), "CPU here": None, "target": ">= 99.9%",
         "meets target": same / total >= 0.999},
        {"case": "decoded on the CPU", "device": str(device), "measure": "largest logit difference",
         "value": f"{largest:.2e}", "CPU here": None, "target": "rounding", "meets target": None},
    ]  # fmt: skip


def vgg_rows(device: torch.device, source: str) -> list[dict]:
    spec, data_config, fit_config = BASELINES["vgg_small"]
    data = load_data(data_config.model_copy(update={"source": source}))
    baseline = _cpu_result("baselines", "model", "vgg_small")
    cpu_epoch = baseline["train s"] / baseline["epochs"]
    rows = []
    for mixed in (False, True) if device.type == "cuda" else (False,):
        torch.manual_seed(0)
        model = build_model(spec, num_classes=10, in_channels=1, input_size=data.input_shape[1])
        history = fit(model, data, fit_config, epochs=1, device=device, progress=False,
                      mixed_precision=mixed)  # fmt: skip
        seconds = history.epochs[0].seconds
        rows.append(
            {"case": "small VGG, 1 epoch" + (", mixed precision" if mixed else ""),
             "device": str(device), "measure": "epoch s (val top-1 after it)",
             "value": f"{seconds:.1f} ({history.final.top1:.2%})", "CPU here": round(cpu_epoch, 1),
             "target": "faster than the CPU", "meets target": seconds < cpu_epoch}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="where Fashion-MNIST is")
    parser.add_argument("--device", default="cuda", help="the CUDA device to check")
    args = parser.parse_args()
    if not torch.cuda.is_available() and args.device != "cpu":
        print("no CUDA device on this machine: nothing measured, nothing written")
        return
    device = resolve_device(args.device)  # --device cpu: a dry run of the script, not written
    rows, on_device, decoded_cpu = recipe_rows(device, args.data)
    data = load_data({"source": args.data})
    rows += decode_rows(device, on_device, decoded_cpu, data)
    rows += vgg_rows(device, args.data)
    notes = (
        f"On {torch.cuda.get_device_name(device)} (torch {torch.__version__}); `CPU here`: "
        "the same work on the 2-core development machine, from bench/results/recipes.json and "
        "baselines.json. Top-1 on the Fashion-MNIST test split."
    )
    if device.type != "cuda":
        print(json.dumps(rows, indent=1))
        return
    publish("gpu_check", "GPU check: a CUDA device against the CPU", rows, COLUMNS, notes)


if __name__ == "__main__":
    main()
