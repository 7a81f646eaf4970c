"""The C export at scale: the zoo's largest network, VGG-16 at full width (15.2M parameters),
8/8 fixed point, exported to C99, compiled and run, its logits compared with the integer path.

    python bench/large_c.py [--width 1.0] [--images 4]

Random weights (seed 0), 3x32x32 inputs, min-max calibration on 16 random images; the C code is
built by netshrink.export.c.build_and_run (gcc -O2 -std=c99 -Wall -Wextra -Werror) and run on
`--images` of them. The seconds are wall time on this machine, whatever else runs on it.

Writes bench/results/large_c.json and the large_c section of docs/benchmarks.md.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.export.c import build_and_run, export_c, quantize_input  # noqa: E402
from netshrink.models import vgg16  # noqa: E402
from netshrink.quant import IntegerModel, QuantConfig, quantize  # noqa: E402

SHAPE = (3, 32, 32)
CALIBRATION = 16
COLUMNS = ["model", "params", "C source bytes", "weight bytes", "quantize s", "export s",
           "build + run s", "bit-exact", "target", "meets target"]  # fmt: skip


def large_c_row(width: float, images: int) -> dict:
    torch.manual_seed(0)
    model = vgg16(width=width).eval()
    x = torch.randn(CALIBRATION, *SHAPE)
    start = time.perf_counter()
    qmodel = quantize(model, [x], QuantConfig(weights=8, activations=8))
    quantized = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="netshrink-large-c-") as work:
        export = export_c(qmodel, Path(work) / "c", SHAPE)
        exported = time.perf_counter()
        inputs = quantize_input(x[:images], export)
        logits = build_and_run(export, inputs, Path(work) / "run")
        built = time.perf_counter()
        source = export.source.stat().st_size
    reference = IntegerModel(qmodel).run(x[:images]).integers.numpy()
    same = bool((logits == reference).all())
    return {
        "model": f"vgg16(width={width:g})",
        "params": sum(p.numel() for p in model.parameters()),
        "C source bytes": source,
        "weight bytes": export.weight_bytes,
        "quantize s": round(quantized - start, 1),
        "export s": round(exported - quantized, 1),
        "build + run s": round(built - exported, 1),
        "bit-exact": f"{images} of {images} images" if same else "no",
        "target": "exports, compiles and runs; logits bit-identical to the integer path",
        "meets target": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    row = large_c_row(args.width, args.images)
    notes = (
        "Random weights (seed 0), 8/8 dynamic fixed point calibrated (min-max) on "
        f"{CALIBRATION} random 3x32x32 images; C99 from netshrink.export.c.export_c, built with "
        "gcc -O2 -std=c99 -Wall -Wextra -Werror and run by build_and_run on the first "
        f"{args.images}; `weight bytes`: the C arrays' const bytes. Torch on 1 thread; wall "
        "seconds on a shared 2-core machine."
    )
    publish("large_c", "The C export at scale (bench/large_c.py)", [row], COLUMNS, notes)


if __name__ == "__main__":
    main()
