"""C99 export of a fixed-point model: the integer datapath of netshrink.quant.IntegerModel as one
self-contained `model.h` / `model.c` pair for a microcontroller (Kim et al.'s hardware target;
Al-Hami et al.'s embedded fixed point; weights stored as in Deep Compression, Han et al. 2016).

The generated code needs a C99 compiler and <stdint.h>, nothing else:

- weights are `static const` arrays in OIHW order, each layer in the least flash of three forms:
  dense; packed 1/2/4/8-bit indices plus a codebook (weight sharing, 4-bit formats), one output
  channel's row unpacked at a time into the scratch arena; sparse (a pruned layer: Deep
  Compression's relative indices + codebook indices, walked by the kernel with no dense copy,
  netshrink.export.c_sparse);
- each producer is fused with what follows it up to its quantizer: conv / linear (+ bias,
  accumulator saturation, ReLU / ReLU6, requantization) is one loop nest, as are residual add,
  average pool (window sum + divide-requantize) and concatenation (one requantizing copy per part);
  max pooling works on stored tensors, flatten / view / dropout are free (NCHW, contiguous);
- rounding is IntegerModel's exactly: `(v + 2**(s-1)) >> s` with a flooring shift written without
  C's implementation-defined right shift of negative numbers, left shifts as multiplications
  (shifting a negative number left is undefined in C), the average pool's floor division;
- activations live in static scratch arenas, one per element width (int8/uint8 share one, so an
  8-bit model has exactly one), planned at export time: a tensor's bytes are reused once its last
  reader ran. Separate widths keep every access at its declared type (no strict-aliasing traps).
  No malloc; `model_run` is not reentrant.

The pieces: netshrink.export.c_graph walks the fx graph and decides what each node becomes;
c_program collects the steps, buffers and const arrays; c_kernels holds the loop nests (c_sparse
those of the sparse form, and its encoding) and c_fixed the ranges and the requantizing
epilogue; c_values the values passed around and the scratch plan; c_source the written files.
This module is the public API and the gcc driver.

    >>> export = export_c(qmodel, "out", (1, 28, 28))
    >>> logits = build_and_run(export, quantize_input(images, export), "build")
    >>> (logits == IntegerModel(qmodel).run(images).integers.numpy()).all()
    True
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError
from ..files import atomic_write
from ..layers import copy_model
from ..quant.fixed import to_integers
from ..quant.quantize import fixed_point_formats
from .c_graph import Builder
from .c_program import STORAGE, LayerStorage
from .c_source import HELPERS as _HELPERS  # noqa: F401 (tests compile the helpers on their own)
from .c_source import CExport, header_text, source_text
from .c_values import BITS, plan_arenas

__all__ = [
    "CFLAGS",
    "CExport",
    "LayerStorage",
    "build_and_run",
    "export_c",
    "flash_and_ram",
    "images_per_second",
    "quantize_input",
]

CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror")

NUMPY_TYPES = {"int8_t": np.int8, "uint8_t": np.uint8, "int16_t": np.int16, "uint16_t": np.uint16}
NUMPY_TYPES |= {"int32_t": np.int32, "int64_t": np.int64}


def export_c(
    qmodel: fx.GraphModule,
    outdir: str | Path,
    input_shape: tuple[int, ...],
    *,
    name: str = "model",
    storage: str = "smallest",
) -> CExport:
    """Write `<name>.h` and `<name>.c` for a fixed-point model (netshrink.quant.quantize) whose
    images have `input_shape` (C, H, W); the entry point is
    `int <name>_run(const <name>_input_t *input, <name>_logit_t *logits)`, bit-exact with
    `IntegerModel(qmodel).run(x).integers`. Raises UnsupportedLayerError naming every layer the C
    code cannot run (float layers, unknown ops).

    `storage`: "smallest" stores each layer in the least flash of dense, packed codebook indices
    and sparse (relative indices + codes, walked by the kernel: netshrink.export.c_sparse);
    "dense" stores every layer dense (the reference a sparse build is timed against); "sparse"
    stores every layer with a non-zero weight sparse.

    Example:
        >>> export = export_c(qmodel, "out", (1, 28, 28))
        >>> print(export.describe())
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ConfigError(f"the C export's name must be a C identifier, not {name!r}")
    if storage not in STORAGE:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE)}, not {storage!r}")
    formats = fixed_point_formats(qmodel)
    graph_module = copy_model(qmodel).eval()
    builder = Builder(graph_module, formats, name, storage)
    builder.check_supported()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(torch.zeros(1, *input_shape))
    builder.walk()
    program = builder.program
    arenas = plan_arenas(program.buffers)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    header, source = outdir / f"{name}.h", outdir / f"{name}.c"
    scratch = sum(size * bits // 8 for bits, size in arenas.items())
    weight_bytes = sum(s.bytes for s in program.storage)
    export = CExport(
        header=header,
        source=source,
        weight_bytes=weight_bytes,
        scratch_bytes=scratch,
        input_format=builder.input_format,
        output_frac=builder.output_frac,
        num_classes=builder.num_classes,
        name=name,
        input_shape=tuple(input_shape),
        input_ctype=builder.input_ctype,
        logits_ctype=builder.logits_ctype,
        activation_bytes=sum(
            b.count * BITS[b.ctype] // 8
            for b in program.buffers
            if b.where == "arena" and b.start >= 0
        ),
        layers=tuple(program.storage),
    )
    header_code, source_code = header_text(export), source_text(export, program, arenas)
    atomic_write(header, lambda tmp: tmp.write_text(header_code))
    atomic_write(source, lambda tmp: tmp.write_text(source_code))
    return export


def quantize_input(images: torch.Tensor, export: CExport) -> np.ndarray:
    """The integers that `<name>_run` takes for normalized `images` (N, C, H, W): the input
    quantizer's rounding, exactly as IntegerModel applies it."""
    q = to_integers(images.detach(), export.input_format).long().numpy()
    return q.astype(NUMPY_TYPES[export.input_ctype])


def build_and_run(
    export: CExport, inputs: np.ndarray, workdir: str | Path, *, repeats: int = 1
) -> np.ndarray:
    """Compile the export and a small driver with gcc -O2 -std=c99 -Wall -Wextra -Werror, run it
    on `inputs` (quantize_input's integers, one image per row) through binary files, and return
    the logits (N, num_classes) as the C code's integers."""
    logits, _ = _run_driver(export, inputs, workdir, repeats)
    return logits


def images_per_second(
    export: CExport,
    inputs: np.ndarray,
    workdir: str | Path,
    *,
    repeats: int = 3,
    cflags: tuple[str, ...] = (),
) -> float:
    """Throughput of the compiled C code (batch 1, one thread, CPU time), `repeats` passes;
    `cflags` go to gcc after CFLAGS (e.g. -fno-tree-vectorize: a core without SIMD, as a
    Cortex-M's compiler leaves these loops)."""
    _, seconds = _run_driver(export, inputs, workdir, repeats, cflags=cflags)
    return len(inputs) * repeats / max(seconds, 1e-9)


def flash_and_ram(export: CExport, workdir: str | Path, *, cc: str = "gcc") -> dict[str, int]:
    """`size` (binutils) of the compiled object: flash = text (code + const data) + data,
    RAM = data + bss (the scratch arenas); plus the export's own weight and scratch counts."""
    obj = _compile_object(export, Path(workdir), cc)
    return object_sizes(obj, export, "size", "apt-get install -y binutils")


def object_sizes(obj: Path, export: CExport, tool: str, install: str) -> dict[str, int]:
    """What binutils' `tool` (size, arm-none-eabi-size) says of the object `obj`, as
    flash_and_ram reports it; ConfigError naming `install` when the tool is missing."""
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(f"`{tool}` is not installed: {install}")
    out = subprocess.run([path, str(obj)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {
        "text": text,
        "data": data,
        "bss": bss,
        "flash_bytes": text + data,
        "ram_bytes": data + bss,
        "weight_bytes": export.weight_bytes,
        "scratch_bytes": export.scratch_bytes,
    }


def input_bytes(export: CExport, inputs: np.ndarray) -> bytes:
    """`inputs` (quantize_input's integers, one image per row) as the bytes `<name>_run` reads;
    ConfigError when they are not the model's size or do not fit its input type."""
    data = np.ascontiguousarray(inputs).reshape(len(inputs), -1)
    if data.shape[1] != math.prod(export.input_shape):
        raise ConfigError(f"inputs of {data.shape[1]} values, the model takes {export.input_shape}")
    dtype = NUMPY_TYPES[export.input_ctype]
    if not np.array_equal(data.astype(dtype), data):
        raise ConfigError(f"inputs do not fit {export.input_ctype}: use quantize_input")
    return data.astype(dtype).tobytes()


_DRIVER = """\
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "{name}.h"

/* driver inputs.bin logits.bin count repeats: runs every image `repeats` times, writes the
   logits of the first pass and prints the CPU seconds of all passes */
int main(int argc, char **argv)
{{
    FILE *f;
    long n, repeats, i, r;
    size_t in_count, out_count;
    {name}_input_t *x;
    {name}_logit_t *y;
    clock_t t0;
    double seconds;
    if (argc != 5) {{
        fprintf(stderr, "usage: %s inputs.bin logits.bin count repeats\\n", argv[0]);
        return 2;
    }}
    n = atol(argv[3]);
    repeats = atol(argv[4]);
    in_count = (size_t)n * {upper}_INPUT_SIZE;
    out_count = (size_t)n * {upper}_NUM_CLASSES;
    x = malloc(in_count * sizeof *x + 1);
    y = malloc(out_count * sizeof *y + 1);
    if (x == NULL || y == NULL)
        return 3;
    f = fopen(argv[1], "rb");
    if (f == NULL || fread(x, sizeof *x, in_count, f) != in_count)
        return 4;
    fclose(f);
    t0 = clock();
    for (r = 0; r < repeats; ++r)
        for (i = 0; i < n; ++i)
            {name}_run(x + i * {upper}_INPUT_SIZE, y + i * {upper}_NUM_CLASSES);
    seconds = (double)(clock() - t0) / CLOCKS_PER_SEC;
    f = fopen(argv[2], "wb");
    if (f == NULL || fwrite(y, sizeof *y, out_count, f) != out_count)
        return 5;
    fclose(f);
    printf("seconds %.9f\\n", seconds);
    free(x);
    free(y);
    return 0;
}}
"""


def _compiler(cc: str) -> str:
    path = shutil.which(cc)
    if path is None:
        raise ConfigError(f"the C compiler {cc!r} is not installed: apt-get install -y gcc")
    return path


def _gcc(cc: str, args: list[str], cflags: tuple[str, ...] = ()) -> None:
    command = [_compiler(cc), *CFLAGS, *cflags, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cc} {' '.join(args)} failed:\n{done.stderr}")


def _compile_object(export: CExport, workdir: Path, cc: str, cflags: tuple[str, ...] = ()) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    obj = workdir / f"{export.name}.o"
    _gcc(cc, ["-c", str(export.source), "-o", str(obj)], cflags)
    return obj


def _run_driver(
    export: CExport, inputs: np.ndarray, workdir, repeats: int, cc: str = "gcc", cflags=()
):
    workdir = Path(workdir)
    obj = _compile_object(export, workdir, cc, cflags)
    driver = workdir / "driver.c"
    driver.write_text(_DRIVER.format(name=export.name, upper=export.name.upper()))
    binary = workdir / "driver"
    _gcc(cc, ["-I", str(export.header.parent), str(driver), str(obj), "-o", str(binary)])
    (workdir / "inputs.bin").write_bytes(input_bytes(export, inputs))
    out = workdir / "logits.bin"
    command = [str(binary), str(workdir / "inputs.bin"), str(out), str(len(inputs)), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the compiled model failed ({done.returncode}): {done.stderr}")
    logits = np.fromfile(out, dtype=NUMPY_TYPES[export.logits_ctype])
    seconds = float(done.stdout.split()[-1])
    return logits.reshape(len(inputs), export.num_classes), seconds
