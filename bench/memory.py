"""Peak memory of what must scale with the data: an image folder trained from disk, and 8/8
post-training fixed point (calibration + the integer-path check) of large networks.

    python bench/memory.py [--cases folder ptq] [--images 20000] [--ptq-images 2000]
                           [--before-src DIR]

Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss; a
folder's decoding workers are child processes, reported beside it) and its wall time.

- folder: `--images` generated 64x64 RGB PNGs in 10 class folders; `load_data` (lazy: file
  paths in memory) and one training epoch through the loader (batch 128, 2 workers), against
  `read_image_folder` reading the whole tree into memory; their decoded size is the reference.
- ptq: 8/8 fixed point (min-max calibration on 1,024 images) of the zoo's largest network,
  `vgg16` (15.2M parameters), and `mobilenet_v2` (2.2M), random weights, 3x32x32 inputs,
  then the integer path checked against the fake-quantized model on `--ptq-images` images in
  batches of 256, as `netshrink quantize` does. `--before-src DIR` runs the same cases on
  another source tree too (a checkout of an earlier commit's `src`), for a before / after.

Writes bench/results/memory.json and the memory section of docs/benchmarks.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, publish  # noqa: E402

SCRIPT = Path(__file__).resolve()
COLUMNS = ["case", "code", "images", "peak RSS MB", "workers MB", "reference MB", "s", "target"]
CLASSES, SIDE = 10, 64
PTQ_MODELS = ("vgg16", "mobilenet_v2")


def write_folder(root: Path, count: int) -> None:
    """`count` 64x64 RGB PNGs, smooth gradients plus noise (PNG keeps them a few KB each)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, SIDE, dtype=np.float32)
    for i in range(count):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        base = ramp[None, :, None] * rng.random(3, dtype=np.float32) + ramp[:, None, None] * 0.2
        pixels = (base + rng.integers(0, 24, (SIDE, SIDE, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")


# ------------------------------------------------------------------ what each child process runs


def child_folder_lazy(root: str) -> dict:
    import torch

    from netshrink.data import DataConfig, load_data

    torch.set_num_threads(1)
    data = load_data(DataConfig(source=f"folder:{root}", workers=2, crop_padding=4, hflip=True))
    seen = 0
    for x, _ in data.loader("train", 128):
        seen += len(x)
    return {"images": seen}


def child_folder_eager(root: str) -> dict:
    from netshrink.folders import read_image_folder

    images, _, _ = read_image_folder(root)
    return {"images": len(images)}


def child_ptq(name: str, images: int) -> dict:
    import torch

    from netshrink.cli.quant import integer_agreement
    from netshrink.models import build_model
    from netshrink.quant.quantize import QuantConfig, quantize

    torch.set_num_threads(1)  # a loaded machine: one thread times steadily
    torch.manual_seed(0)
    model = build_model({"name": name}, num_classes=10, in_channels=3, input_size=32).eval()
    calibration = torch.randn(1024, 3, 32, 32)
    qmodel = quantize(model, calibration, QuantConfig(weights=8, activations=8))
    test = [(torch.randn(256, 3, 32, 32), torch.zeros(256, dtype=torch.long))
            for _ in range(images // 256)]  # fmt: skip
    same, total = integer_agreement(qmodel, test)
    return {"images": total, "identical": same}


def child_floor() -> dict:
    import torch  # noqa: F401

    import netshrink.data  # noqa: F401

    return {"images": 0}


CHILDREN = {
    "floor": child_floor,
    "folder-lazy": child_folder_lazy,
    "folder-eager": child_folder_eager,
    "ptq": child_ptq,
}


def run_child(case: str, args: list[str], src: Path | None) -> dict:
    """Run one case in a fresh interpreter (with `src` first on the path); its result, its
    peak RSS and its children's in MB, and its wall time."""
    env = {**os.environ, "NETSHRINK_PROGRESS": "0"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = [sys.executable, str(SCRIPT), "--child", case, *args]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1][:200], "s": round(seconds, 1)}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "s": round(seconds, 1)}


def _child_main(case: str, args: list[str]) -> None:
    import resource

    result = CHILDREN[case](*[int(a) if a.isdigit() else a for a in args])
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({**result, "peak RSS MB": round(own), "workers MB": round(children)}))


# ------------------------------------------------------------------------------------ the cases


def folder_rows(count: int) -> list[dict]:
    decoded_mb = count * 3 * SIDE * SIDE / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), count)
        for case, label, target in (
            ("floor", "import torch + netshrink only", "the floor"),
            ("folder-lazy", "folder on disk: load_data + 1 epoch", "peak far below decoded"),
            ("folder-eager", "folder read into memory (read_image_folder)", "reference"),
        ):
            result = run_child(case, [tmp] if case != "floor" else [], None)
            rows.append({"case": label, "code": "this tree", "reference MB": round(decoded_mb),
                         "target": target, **result})  # fmt: skip
    return rows


def ptq_rows(images: int, before: Path | None) -> list[dict]:
    """Each model at `images` and at a quarter of them (the same peak: bounded by a batch, not by
    the images), and at `images` on the `before` tree when given."""
    runs = [("this tree", None, images), ("this tree", None, images // 4)]
    runs += [("before", before, images)] if before is not None else []
    rows = []
    for name in PTQ_MODELS:
        for code, src, count in runs:
            result = run_child("ptq", [name, str(count)], src)
            rows.append({"case": f"8/8 PTQ + integer check, {name}", "code": code,
                         "workers MB": None, "target": "same peak for fewer images", **result})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["folder", "ptq"], choices=["folder", "ptq"])
    parser.add_argument("--images", type=int, default=20_000, help="PNGs in the folder case")
    parser.add_argument("--ptq-images", type=int, default=2_000, help="images checked in ptq")
    parser.add_argument("--before-src", type=Path, help="an earlier source tree to compare")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child_main(args.child[0], args.child[1:])
    rows = []
    if "folder" in args.cases:
        rows += folder_rows(args.images)
    if "ptq" in args.cases:
        rows += ptq_rows(args.ptq_images, args.before_src)
    notes = (
        "Peak resident memory of a fresh process (ru_maxrss), in MiB; the first row is the "
        "floor every process pays (torch and netshrink imported); `workers MB`: the largest "
        "decoding worker (forked: it shares the parent's pages). `reference MB`: the folder's images decoded (uint8). "
        "`code`: this tree, or `before` (--before-src, an earlier commit's source, "
        f"{args.before_src}). ptq: random weights and inputs (memory does not depend on "
        "them), 1,024 calibration images; `s` includes building the model and Python's start."
    )
    publish("memory", "Peak memory: folders from disk, fixed point at scale", rows, COLUMNS, notes)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
