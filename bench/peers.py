"""Peers side by side: netshrink against the tools a user would pick instead, on the same
models, data and machine, in one run.

    .venv-peers/bin/python bench/peers.py [--quick] [--part size filters] [--seeds 0 1 2]
                                          [--threads 1] [--models lenet5_caffe ...]
                                          [--tools netshrink ...]

Run it in the peers' own environment (docs/peers.md: `.venv-peers`, never a dependency of
netshrink); a peer that does not import is left out and named in the notes. Models: the cached
Fashion-MNIST baselines (netshrink.baseline.BASELINES). Two parts, each its own section of
docs/benchmarks.md and its own JSON: `size` (LeNet-300-100, the Caffe LeNet-5 and the small VGG:
tables 1, 2, 4 and 6 of the issue) and `filters` (the Caffe LeNet-5, the small VGG and ResNet-20:
table 3). Cases of the size part:

- PyTorch by hand: `torch.nn.utils.prune.global_unstructured` L1 to each sparsity + fine-tuning,
  then the fp32 state dict or torch.ao int8 static PTQ, saved with `torch.save`; ONNX Runtime's
  static int8 of the same pruned model;
- post-training int8 of the dense model: torch.ao, ONNX Runtime, NNCF, Brevitas, torchao and
  netshrink's 8/8 fixed point, all on the same 1,024 calibration images;
- netshrink: its recipe for the model (Deep Compression;
  bench/peers_netshrink.py's RECIPES) run by `netshrink.pipeline.run_recipe`.

The filters part: Torch-Pruning and netshrink remove the same fraction of every conv's filters
(residual groups pruned together), fine-tune the same epochs, and report MACs removed, top-1 and
the dense / pruned latency ratio at batch 1 and 64 on one thread.

Every file is also compressed with zip (DEFLATE, level 9) and xz (preset 9); a tool's size is
the smallest of the three. Top-1 is measured on what the file holds (the decoded .nsk, the
exported ONNX under ONNX Runtime, the quantized PyTorch model). `--quick` is a smoke run (one
seed, one setting, one epoch) that prints the tables and writes nothing. Otherwise writes
bench/results/peers.json (size) and peers_filters.json (filters) and their sections of
docs/benchmarks.md. `--models` and `--tools` rerun a part of it (after a change to netshrink,
`--tools netshrink` remeasures its rows only): the published rows of the rest are kept, each
with the command that made it.
"""

import argparse
import importlib
import lzma
import statistics
import sys
import time
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers_fronts as fronts  # noqa: E402
import peers_netshrink as ns  # noqa: E402
import peers_tables as tables  # noqa: E402
import peers_tools as tools  # noqa: E402
import readme  # noqa: E402
from common import DOC, merge_published, publish  # noqa: E402
from netshrink.baseline import BASELINES, cached_baseline  # noqa: E402
from netshrink.measure import dense_bytes  # noqa: E402
from netshrink.report import console  # noqa: E402
from netshrink.train import FitConfig  # noqa: E402
from pipeline import baseline  # noqa: E402

MODELS = {
    "lenet300_100": "LeNet-300-100",
    "lenet5_caffe": "Caffe LeNet-5",
    "vgg_small": "small VGG",
    "resnet20": "ResNet-20",
}
PARTS = {
    "size": ("lenet300_100", "lenet5_caffe", "vgg_small"),
    "filters": ("lenet5_caffe", "vgg_small", "resnet20"),
}
FIRST_SEED_ONLY = {"vgg_small"}  # about 74 s a training epoch here: one seed keeps the run short
PEERS = {
    "NNCF": "nncf",
    "Brevitas": "brevitas",
    "torchao": "torchao",
    "Torch-Pruning": "torch_pruning",
}
TOOLS = ("PyTorch", "ONNX Runtime", *PEERS, "netshrink")
HAND_LR, FILTER_LR = 0.005, 0.01
COLUMNS = ["model", "tool", "pipeline", "seeds", "top-1", "loss pt", "val loss pt", "file bytes",
           "zip bytes", "xz bytes", "ratio", "seconds"]  # fmt: skip
FILTER_COLUMNS = ["model", "tool", "pipeline", "seeds", "top-1", "loss pt", "MACs removed",
                  "latency ratio @1", "latency ratio @64", "smallest", "seconds"]  # fmt: skip


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    amounts: tuple[float, ...] = (0.3, 0.5, 0.7)
    epochs: int = 3
    qat_bits: tuple[int, ...] = (4, 2)  # Brevitas QAT of each pruned model
    qat_epochs: int = 2
    quick: bool = False


QUICK = Settings(seeds=(0,), sparsities=(0.9,), amounts=(0.5,), epochs=1, qat_bits=(2,),
                 qat_epochs=1, quick=True)  # fmt: skip


def available() -> tuple[set[str], list[str]]:
    """The peers that import here, and a note for each that does not."""
    found, missing = set(), []
    for tool, module in PEERS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
            found.add(tool)
        except Exception as exc:  # an install that breaks on import is as absent as none
            missing.append(
                f"{tool} left out: `import {module}` failed ({type(exc).__name__}: {exc})."
            )
    return found, missing


def sizes(raw: bytes) -> dict[str, int]:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model", raw)
    return {
        "file": len(raw),
        "zip": len(buffer.getvalue()),
        "xz": len(lzma.compress(raw, preset=9)),
    }


def summarize(model: str, ref: tuple[float, int], key: tuple, results: list) -> dict:
    """One row: medians over the seeds of top-1, each size, MACs removed and seconds."""
    (tool, pipeline, kind), (fp32_top1, fp32_bytes) = key, ref
    size = [sizes(r.raw) for r in results]
    median = {k: round(statistics.median(s[k] for s in size)) for k in ("file", "zip", "xz")}
    stored = min(median, key=median.get)
    top1 = statistics.median(r.top1 for r in results)
    macs = [r.macs_removed for r in results if r.macs_removed is not None]
    latency = [r.latency_ratio for r in results if r.latency_ratio is not None]
    val_losses = [r.val_loss for r in results if r.val_loss is not None]
    return {
        "model": MODELS[model], "tool": tool, "pipeline": pipeline, "kind": kind,
        "seeds": len(results), "top-1": top1, "loss pt": round(100 * (fp32_top1 - top1), 2),
        "file bytes": median["file"], "zip bytes": median["zip"], "xz bytes": median["xz"],
        "smallest": median[stored], "stored as": stored, "ratio": fp32_bytes / median[stored],
        "MACs removed": statistics.median(macs) if macs else None,
        "val loss pt": statistics.median(val_losses) if val_losses else None,
        **{f"latency ratio @{b}": statistics.median(r[b] for r in latency) if latency else None
           for b in tools.LATENCY_BATCHES},
        "seconds": round(statistics.median(r.seconds for r in results), 2),
        "top-1 per seed": [r.top1 for r in results],
        "smallest bytes per seed": [min(s.values()) for s in size],
    }  # fmt: skip


class Run:
    """One model's cases; `add` files each Result under (tool, pipeline, kind)."""

    def __init__(self, name: str, settings: Settings, peers: set[str], chosen: set[str]) -> None:
        self.name, self.settings, self.peers, self.chosen = name, settings, peers, chosen
        self.model, self.data, base_fit = baseline(name)
        spec, _, fit_config = BASELINES[name]
        self.meta = cached_baseline(spec, self.data, fit_config, progress=False)[1]
        self.batch_size = base_fit.batch_size
        self.calibration = tools.calibration_batches(self.data)
        self.results: dict[tuple, list] = defaultdict(list)
        self.failures: list[str] = []

    def add(self, tool: str, pipeline: str, kind: str, make, *args) -> None:
        """File `make(*args)`'s Result under (tool, pipeline, kind). A pipeline that raises is
        named in the notes with its error and the run goes on: one peer's failure on one model
        must not cost the other measurements. A tool not chosen (`--tools`) is not run."""
        if not self.wants(tool):
            return
        try:
            result = make(*args)
        except Exception as exc:  # noqa: BLE001 - third-party code: any failure is a finding
            self.failures.append(f"{tool} ({pipeline}) failed on {MODELS[self.name]}: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}")  # fmt: skip
            console().print(f"  [red]{self.failures[-1]}[/red]")
            return
        self.results[(tool, pipeline, kind)].append(result)
        console().print(f"  {MODELS[self.name]} | {tool} | {pipeline}: top-1 {result.top1:.4f}, "
                        f"{len(result.raw):,} B, {result.seconds:.1f} s")  # fmt: skip

    def wants(self, *tools: str) -> bool:
        """Whether any of `tools` is run."""
        return any(tool in self.chosen for tool in tools)

    def fit_config(self, lr: float, seed: int, epochs: int | None = None) -> FitConfig:
        epochs = self.settings.epochs if epochs is None else epochs
        return FitConfig(epochs=epochs, lr=lr, batch_size=self.batch_size, seed=seed)

    def rows(self) -> list[dict]:
        ref = (tools.top1(self.model, self.data), dense_bytes(self.model))
        return [summarize(self.name, ref, key, rs) for key, rs in self.results.items()]


def ptq_cases(run: Run) -> None:
    """Post-training int8 of the dense model by every tool (deterministic: run once)."""
    model, data, calib = run.model, run.data, run.calibration
    run.add("PyTorch", "fp32 state dict (the dense baseline)", "reference",
            tools.torch_fp32, model, data)  # fmt: skip
    run.add("PyTorch", "torch.ao int8 static PTQ (FX, x86)", "ptq",
            tools.torch_ao_int8, model, data, calib)  # fmt: skip
    run.add("ONNX Runtime", "int8 static PTQ (QDQ, per channel)", "ptq",
            tools.ort_int8, model, data, calib)  # fmt: skip
    if "NNCF" in run.peers:
        run.add("NNCF", "int8 PTQ (nncf.quantize, ONNX backend)", "ptq",
                tools.nncf_int8, model, data, calib)  # fmt: skip
    if "Brevitas" in run.peers:
        run.add("Brevitas", "int8 PTQ (graph quantize + calibration, QCDQ ONNX)", "ptq",
                tools.brevitas_int8, model, data, calib)  # fmt: skip
    if "torchao" in run.peers:
        run.add("torchao", "int8 weights + dynamic int8 activations (Linear layers)", "ptq",
                tools.torchao_int8, model, data)  # fmt: skip
    run.add("netshrink", "8/8 fixed point PTQ, packed .nsk", "ptq",
            ns.ptq8, model, run.meta, data, calib)  # fmt: skip


def hand_cases(run: Run, seed: int) -> None:
    """PyTorch by hand at each sparsity: fp32, torch.ao int8 and ONNX Runtime int8 files, and
    Brevitas low-bit QAT of the same pruned model."""
    epochs, qat_epochs = run.settings.epochs, run.settings.qat_epochs
    if not run.wants("PyTorch", "ONNX Runtime", "Brevitas"):
        return  # the pruning they share costs the most
    for sparsity in run.settings.sparsities:
        config = run.fit_config(HAND_LR, seed)
        pruned, seconds = tools.torch_prune(run.model, run.data, sparsity, config)
        label = f"global L1 {sparsity:.0%} + {epochs} ep"
        run.add("PyTorch", f"{label}, fp32", "size", tools.torch_fp32, pruned, run.data, seconds)
        run.add("PyTorch", f"{label}, torch.ao int8", "size",
                tools.torch_ao_int8, pruned, run.data, run.calibration, seconds)  # fmt: skip
        run.add("ONNX Runtime", f"{label} (PyTorch), ORT int8", "size",
                tools.ort_int8, pruned, run.data, run.calibration, seconds)  # fmt: skip
        if "Brevitas" not in run.peers:
            continue
        qat = run.fit_config(HAND_LR, seed, qat_epochs)
        for bits in run.settings.qat_bits:
            run.add("Brevitas", f"{label} (PyTorch), {bits}-bit weights QAT {qat_epochs} ep",
                    "size", tools.brevitas_qat, pruned, run.data, run.calibration, bits, qat,
                    seconds)  # fmt: skip


def filter_cases(run: Run, seed: int) -> None:
    """Filter pruning of every convolution at each amount, Torch-Pruning and netshrink."""
    epochs = run.settings.epochs
    for amount in run.settings.amounts:
        config = run.fit_config(FILTER_LR, seed)
        label = f"{amount:.0%} of conv filters (L1) + {epochs} ep"
        if "Torch-Pruning" in run.peers:
            run.add("Torch-Pruning", label, "filters",
                    tools.tp_filters, run.model, run.data, amount, config)  # fmt: skip
        run.add("netshrink", f"{label}, packed .nsk", "filters",
                ns.filters, run.model, run.meta, run.data, amount, config)  # fmt: skip


def size_model(name: str, settings: Settings, peers: set[str], chosen: set[str]) -> Run:
    """The size part for one model: PTQ, PyTorch by hand and netshrink's recipe, every seed
    (the first only for the models in FIRST_SEED_ONLY)."""
    run = Run(name, settings, peers, chosen)
    console().rule(f"{MODELS[name]}: size")
    ptq_cases(run)
    front = ns.front_recipes(name)
    front = [(ns.quick_recipe(front[0][0]), front[0][1])] if settings.quick else front
    seeds = settings.seeds[:1] if name in FIRST_SEED_ONLY else settings.seeds
    for seed in seeds:
        hand_cases(run, seed)
        for recipe, label in front:
            run.add("netshrink", label, "size", ns.packed_recipe, recipe, seed)
    return run


def filter_model(name: str, settings: Settings, peers: set[str], chosen: set[str]) -> Run:
    """The filters part for one model: the first seed only (the VGG and ResNet-20 fine-tunings
    take minutes an epoch here)."""
    run = Run(name, settings, peers, chosen)
    console().rule(f"{MODELS[name]}: filters")
    filter_cases(run, settings.seeds[0])
    return run


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("torch", "onnxruntime", "nncf", "brevitas", "torchao", "torch-pruning"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def method_note(settings: Settings) -> str:
    seeds = ", ".join(map(str, settings.seeds))
    return (
        "Top-1 on the 10,000 Fashion-MNIST test images, measured on what each file holds; loss pt "
        "against the dense baseline. Every file is also compressed with zip (DEFLATE -9) and xz "
        "(-9); `ratio` is the dense fp32 weights' bytes over the smallest of the three. Pipelines "
        f"that train run once per seed ({seeds}; the small VGG: the first only) and show medians "
        "(per-seed values in the JSON); "
        "post-training int8 is deterministic and runs once. PyTorch by hand: global L1 pruning + "
        f"{settings.epochs} epochs at lr {HAND_LR:g} (masks on), `prune.remove`, then the fp32 "
        "state dict or torch.ao int8 (FX, x86 qconfig), or ONNX Runtime int8 of the same model. "
        "netshrink: `run_recipe` on the recipe named in the row, with the recipe's `seed` set "
        "(it reaches every stage's training); its seconds include the recipe's per-stage "
        "measurements. "
        "All PTQ tools calibrate on the same 1,024 training images. "
        f"{_seconds_note()} Versions: {versions()}. Setup and the peers left out: docs/peers.md."
    )


def _seconds_note() -> str:
    return (
        "Seconds: wall time of the pipeline, evaluation excluded, torch on "
        f"{torch.get_num_threads()} thread(s) on a shared 2-core machine."
    )


def size_notes(rows: list[dict], settings: Settings, missing: list[str], seconds: float) -> str:
    table, verdicts = fronts.equal_loss_table(rows)
    plot = DOC.parent / "peers_fronts.png"
    if not settings.quick:  # a smoke run writes nothing
        fronts.plot_fronts(rows, plot)
    parts = [
        method_note(settings),
        *missing,
        "### (1) Size at equal loss, read off the fronts",
        "Each tool's front: its points that no other of its points beats on both size and loss. "
        "netshrink's file for a bound is chosen on the validation split (its smallest whose "
        "validation loss is within the bound; the rows without a validation loss, chosen on "
        "test); the best peer's front is read at that file's test loss, interpolated in log size "
        "between two measured points, never extrapolated: beyond a peer's largest measured loss "
        'its smallest file bounds what it needs from above ("at most"). Goal: >= '
        f"{tables.GOAL:g}x smaller at equal loss.",
        table,
        "\n".join(f"- {v}" for v in verdicts),
        f"![size vs loss fronts]({plot.name})",
        "### (1b) Each tool's smallest file within each loss bound (test)",
        tables.size_table(rows)[0],
        "### (2) Accuracy at the peer's int8 size",
        tables.int8_size_table(rows),
        "### (4) Post-training int8: top-1 (loss), file bytes",
        tables.ptq_table(rows),
        "### (6) Wall time of each pipeline, seconds",
        tables.time_table(rows),
        f"Whole run: {seconds:.0f} s.",
    ]
    return "\n\n".join(p for p in parts if p)


def filter_notes(rows: list[dict], settings: Settings, missing: list[str], seconds: float) -> str:
    parts = [
        "Top-1 on the 10,000 Fashion-MNIST test images, loss pt against the dense baseline, "
        f"first seed ({settings.seeds[0]}) only. Both tools remove the same fraction of every "
        "conv's filters by L1 norm (Torch-Pruning `MetaPruner` scores each coupled group; "
        "netshrink `prune_filters` with residual groups pruned together) and fine-tune "
        f"{settings.epochs} epochs at lr {FILTER_LR:g} with the baseline's batch size and "
        "augmentation. netshrink's row is measured on the model decoded from its packed .nsk "
        "file; Torch-Pruning's on the pruned module it saves with `tp.state_dict` (`smallest`: "
        "that file's bytes, or the .nsk's, or either compressed with zip / xz, whichever is "
        "smallest). `latency ratio @B`: dense / pruned median latency of a batch of B in "
        "PyTorch on one thread, the two measured alternately. " + _seconds_note(),
        *missing,
        "### (3) Filter pruning: the most MACs removed at <= 1 pt loss",
        tables.filter_table(rows),
        f"Whole run: {seconds:.0f} s.",
    ]
    return "\n\n".join(p for p in parts if p)


def show(rows: list[dict], columns: list[str], text: str) -> None:
    """--quick: the tables on the terminal, nothing written."""
    table = Table(title="Peers side by side (quick: not published)")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row[c], float)
                        else str(row[c]) for c in columns))  # fmt: skip
    console().print(table)
    print(text)


PART_RUNS = {
    "size": (size_model, size_notes, COLUMNS, "peers", "Peers side by side (bench/peers.py)"),
    "filters": (filter_model, filter_notes, FILTER_COLUMNS, "peers_filters",
                "Peers side by side: filter pruning (bench/peers.py)"),
}  # fmt: skip


def _part(row: dict) -> tuple[str, str]:
    """What a partial rerun replaces: one tool's rows of one model."""
    return row["model"], row["tool"]


def _part_order(part: tuple[str, str]) -> tuple[int, int]:
    labels = list(MODELS.values())
    return labels.index(part[0]), TOOLS.index(part[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; prints, writes nothing")
    parser.add_argument("--part", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="run only these models (of each part's)")  # fmt: skip
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS,
                        help="run only these tools' pipelines")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the peers' deprecation notices would drown the progress
    settings = QUICK if args.quick else Settings()
    if args.seeds:
        settings = Settings(**{**settings.__dict__, "seeds": tuple(args.seeds)})
    peers, missing = available()
    for part in args.part:
        run_one, notes, columns, name, title = PART_RUNS[part]
        start = time.perf_counter()
        models = [m for m in PARTS[part] if m in args.models]
        runs = [run_one(model, settings, peers, set(args.tools)) for model in models]
        rows = [row for run in runs for row in run.rows()]
        failures = [failure for run in runs for failure in run.failures]
        kept = ""
        if not settings.quick:  # a rerun of some models or tools keeps the others' rows
            rows, kept = merge_published(name, rows, _part, _part_order)
        text = notes(rows, settings, missing + failures, time.perf_counter() - start) + kept
        if settings.quick:
            show(rows, columns, text)
        elif rows:
            publish(name, title, rows, columns, text)
            readme.refresh()


if __name__ == "__main__":
    main()
