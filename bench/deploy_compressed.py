"""bench/deploy.py's `compressed` case: what the compressed recipes deploy as (the deployment
issue's table). Each recipe runs through netshrink.pipeline.run_recipe (resumable, in the cache
folder) with C and int8 exports; this module then sets every artifact side by side with the
targets: C flash within 1.5x of the .nsk bytes (host and Cortex-M4), sparse C at least 0.5 x the
MACs ratio times the dense C's images/s, RAM equal to the planned scratch, C bit-exact on the
whole test split (and on an emulated Cortex-M3), the int8 ONNX file no larger than ONNX
Runtime's quantize_static's and agreeing with the integer path on >= 99.9% of the images.
"""

import statistics
from pathlib import Path

import torch

from netshrink.baseline import default_cache_dir
from netshrink.checkpoint import load_checkpoint
from netshrink.data import load_data
from netshrink.deploy import CheckImages, ExportConfig, ort_images_per_second
from netshrink.export.c import export_c, flash_and_ram, images_per_second, quantize_input
from netshrink.export.c_cortexm import cortex_m_flash_and_ram, run_on_qemu
from netshrink.export.onnx import export_onnx, onnx_logits, onnx_session
from netshrink.measure import count_macs, dense_bytes
from netshrink.methods import stage_class
from netshrink.pipeline import run_recipe
from netshrink.quant import IntegerModel
from netshrink.recipe import load_recipe
from ort_int8 import ort_quantize_static

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "LeNet-300-100": "deep-compression-lenet300",
    "Caffe LeNet-5": "deep-compression-lenet5-caffe",
    "small VGG": "hierarchical-kim",
}
FLASH_TARGET = 1.5  # C flash over .nsk bytes
SPEED_TARGET = 0.5  # sparse C speed-up over the MACs ratio
QEMU_IMAGES = 200
TIMED_IMAGES = 500
# gcc -O2 vectorizes the dense loops with the host's SIMD; a Cortex-M core has none for them
SCALAR = ("-fno-tree-vectorize",)
COMPRESSED_COLUMNS = [
    "model",
    "artifact",
    "bytes",
    "flash B",
    "RAM B",
    "images/s",
    "top-1",
    "check",
    "ratio",
    "target",
    "meets target",
]
COMPRESSED_NOTES = (
    "Recipes: deep-compression-lenet300 and deep-compression-lenet5-caffe (prune, share, 8-bit "
    "fixed point), hierarchical-kim (small VGG: prune, share, 8-bit fixed point), one seed, "
    "from the cached baselines; the float model for ONNX Runtime's own quantization is the "
    "recipe's last float stage. `bytes`: the file (for C, the weights' const bytes); `flash B` / "
    "`RAM B`: text + data / data + bss of the compiled object (`size`; Cortex-M4: "
    "arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -O2); `images/s`: batch 1, C on one core (CPU "
    "time) over 500 test images, ONNX Runtime on one thread (median of 100 runs); C speeds of "
    "the exported and the dense code measured alternately, median of 3, also built without "
    "vectorization (-fno-tree-vectorize: the dense loops as a core without SIMD runs them). "
    "`ratio`: dense fp32 bytes / file bytes on the .nsk row, flash / .nsk bytes on the C rows, "
    "speed-up over the "
    "dense C on the sparse C row. The machine is shared, so speeds are indicative."
)


def compressed_rows(work: Path, recipes: list[str] | None = None) -> list[dict]:
    """The rows of each recipe of RECIPES (or of `recipes`, a selection of its names)."""
    rows = []
    for label, name in RECIPES.items():
        if recipes is not None and name not in recipes:
            continue
        recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        recipe = recipe.model_copy(update={"export": ExportConfig(c=True, int8=True)})
        directory = default_cache_dir() / "deploy" / name  # resumed when run again
        result = run_recipe(recipe, directory, latency=False, progress=False)
        rows += _model_rows(label, result, load_data(recipe.data), work / name)
    return rows


def _model_rows(label: str, result, data, work: Path) -> list[dict]:
    model, shape = result.model.cpu().eval(), data.input_shape
    nsk = result.file.stat().st_size
    c_art, int8_art = result.artifacts
    top1 = result.stages[-1].measurement["top1"]
    rows = [
        _row(label, ".nsk", nsk, top1=top1, ratio=dense_bytes(model) / nsk, check="decoded file")
    ]
    rows += _c_rows(label, model, shape, data, nsk, c_art, work)
    rows += _onnx_rows(label, result, data, int8_art, work)
    return rows


def _c_rows(label, model, shape, data, nsk: int, c_art, work: Path) -> list[dict]:
    exported = export_c(model, work / "smallest", shape)
    dense = export_c(model, work / "dense", shape, storage="dense")
    images = torch.cat([x for x, _ in CheckImages(data, TIMED_IMAGES)])
    inputs = quantize_input(images, exported)
    fast, slow = _speeds(exported, dense, inputs, work, ())
    scalar_fast, scalar_slow = _speeds(exported, dense, inputs, work, SCALAR)
    macs = count_macs(model, shape)
    mac_ratio = sum(r.macs for r in macs) / max(1, sum(r.sparse_macs for r in macs))
    host, m4 = flash_and_ram(exported, work / "host"), cortex_m_flash_and_ram(exported, work / "m4")
    dense_host = flash_and_ram(dense, work / "host-dense")
    integer = IntegerModel(model).run(images[:QEMU_IMAGES]).integers.numpy()
    qemu = run_on_qemu(exported, inputs[:QEMU_IMAGES], work / "qemu")
    same_qemu = int((qemu == integer).all(axis=1).sum())
    speed_goal = SPEED_TARGET * mac_ratio
    forms = sorted({s.form for s in exported.layers})
    return [
        _row(
            label, f"C, as exported ({'/'.join(forms)})", exported.weight_bytes,
            flash=host["flash_bytes"], ram=host["ram_bytes"], speed=fast, top1=c_art.top1,
            check=f"{c_art.check}; RAM = scratch {exported.scratch_bytes:,} + alignment",
            ratio=host["flash_bytes"] / nsk, target=f"flash <= {FLASH_TARGET}x .nsk",
            meets=host["flash_bytes"] <= FLASH_TARGET * nsk,
        ),
        _row(
            label, "C, every layer dense", dense.weight_bytes, flash=dense_host["flash_bytes"],
            ram=dense_host["ram_bytes"], speed=slow, ratio=dense_host["flash_bytes"] / nsk,
        ),
        _row(
            label, "C speed-up, exported / dense", None, speed=fast, ratio=fast / slow,
            check=f"MACs ratio {mac_ratio:.2f} (dense / non-zero)",
            target=f"speed-up >= {SPEED_TARGET} x MACs ratio = {speed_goal:.2f}",
            meets=fast / slow >= speed_goal,
        ),
        _row(
            label, "C speed-up, scalar build (no SIMD)", None, speed=scalar_fast,
            ratio=scalar_fast / scalar_slow,
            check=f"gcc {' '.join(SCALAR)}; dense {scalar_slow:,.0f} images/s",
            target=f"speed-up >= {speed_goal:.2f}", meets=scalar_fast / scalar_slow >= speed_goal,
        ),
        _row(
            label, "C on Cortex-M4 (arm-none-eabi)", exported.weight_bytes, flash=m4["flash_bytes"],
            ram=m4["ram_bytes"], ratio=m4["flash_bytes"] / nsk,
            check=f"qemu mps2-an385 (Cortex-M3): logits equal to the integer path on "
            f"{same_qemu}/{QEMU_IMAGES}",
            target=f"flash <= {FLASH_TARGET}x .nsk", meets=m4["flash_bytes"] <= FLASH_TARGET * nsk,
        ),
    ]  # fmt: skip


def _speeds(exported, dense, inputs, work: Path, cflags) -> tuple[float, float]:
    """Images/s of the two builds, measured alternately (the machine's drift hits both)."""
    speeds = {id(exported): [], id(dense): []}
    for _ in range(3):
        for export in (exported, dense):
            speed = images_per_second(export, inputs, work / "timing", cflags=cflags)
            speeds[id(export)].append(speed)
    return statistics.median(speeds[id(exported)]), statistics.median(speeds[id(dense)])


def _onnx_rows(label, result, data, int8_art, work: Path) -> list[dict]:
    float_model = _last_float_model(result)
    fp32 = export_onnx(float_model, work / "float.onnx", data.input_shape)
    calibration = [x.numpy() for _, (x, _) in zip(range(4), data.loader("train", 64))]
    static = ort_quantize_static(fp32, work / "static.onnx", calibration)
    static_bytes = static.stat().st_size
    rows = [
        _row(
            label, "int8 ONNX (netshrink)", int8_art.bytes, speed=int8_art.images_per_second,
            top1=int8_art.top1, check=int8_art.check,
            target="bytes <= quantize_static's; agreement >= 99.9%",
            meets=int8_art.bytes <= static_bytes and int8_art.agreement >= 0.999,
        )
    ]  # fmt: skip
    for name, path in (("int8 ONNX (ORT quantize_static)", static), ("fp32 ONNX", fp32)):
        session = onnx_session(path, threads=1)
        rows.append(
            _row(
                label,
                name,
                path.stat().st_size,
                speed=ort_images_per_second(session, data.input_shape),
                top1=_onnx_top1(session, data),
                check="of the last float stage's model",
            )  # fmt: skip
        )
    return rows


def _last_float_model(result):
    """The model of the last stage before fixed point, read back from its checkpoint."""
    record = next(r for r in reversed(result.stages[:-1]) if not stage_class(r.method).fixed_point)
    model, _ = load_checkpoint(result.directory / record.checkpoint)
    return model.eval()


def _onnx_top1(session, data) -> float:
    correct = seen = 0
    for x, y in data.loader("test", 256, shuffle=False):
        correct += int((onnx_logits(session, x).argmax(1) == y.numpy()).sum())
        seen += len(y)
    return correct / seen


def _row(model, artifact, size, *, flash=None, ram=None, speed=None, top1=None, check=None,
         ratio=None, target=None, meets=None) -> dict:  # fmt: skip
    return {
        "model": model,
        "artifact": artifact,
        "bytes": size,
        "flash B": flash,
        "RAM B": ram,
        "images/s": None if speed is None else round(speed, 1),
        "top-1": top1,
        "check": check,
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
        "meets target": meets,
    }
