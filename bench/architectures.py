"""Architecture x capability matrix (issue 18): which of netshrink's methods and exports work on
which network, each cell `ok` or the reason it is not.

    python bench/architectures.py [--only NAME ...] [--timeout SECONDS]

Rows: every zoo model (netshrink.models.MODELS) at a small width, and the user-style networks of
bench/arch_styles.py (built as `arch_styles:NAME`, the way a user's own factory is), all on
3x32x32 inputs with 10 classes and random weights (batch-norm statistics settled on random
images). Columns: the public API as a user calls it, on a fixed batch of random inputs; see
CAPABILITIES. A cell is `ok`, an exception (its class; the one-line message in the notes), or a
measured disagreement (the share of inputs that agree, when below 100%).

Each architecture runs in worker processes, each cell under `signal.alarm` and every exception
caught per cell; a crash or hang in native code costs its one cell (a fresh worker goes on with
the next), never the bench. Writes bench/results/architectures.json and the architectures block
of docs/benchmarks.md.
"""

import argparse
import copy
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netshrink as ns  # noqa: E402
from arch_styles import STYLES  # noqa: E402
from common import DOC, RESULTS, command_line, replace_block  # noqa: E402
from netshrink.export.agreement import int8_agreement  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.quant import IntegerModel  # noqa: E402
from netshrink.report import console  # noqa: E402

SHAPE = (3, 32, 32)
CLASSES = 10
INPUTS = 32  # the compared batch: random normal images, seed 0
CALIBRATION = 64  # calibration images: random normal, seed 1
ZOO_ARGS = {"vgg_small": {"width": 0.25}, "resnet20": {"width": 8}, "mobilenet_v2": {"width": 0.25}}
SPARSITY, SHARE_BITS, FILTER_AMOUNT = 0.5, 4, 0.25
CAPABILITIES = {
    "pack": "pack -> unpack (rebuilt from the file's ModelSpec): identical outputs",
    "prune": f"prune_magnitude, {SPARSITY:.0%} per layer: that sparsity, finite outputs",
    "share": f"share_kmeans, {SHARE_BITS} bits: at most {2**SHARE_BITS} values a layer",
    "filters": f"prune_filters amount {FILTER_AMOUNT}: fewer parameters, then pack -> unpack "
    "(edits replayed) gives identical outputs",
    "fold": "fold_batchnorm: outputs within 1e-4 of the largest logit",
    "quantize": f"quantize, 8-bit, minmax calibration on {CALIBRATION} random images: finite outputs",
    "integer": "IntegerModel: logits bit-identical to the fake-quantized model's, no overflow",
    "pack q8": "pack -> unpack of the 8-bit model: identical outputs",
    "onnx": "export_onnx + ONNX Runtime: same top-1 as PyTorch, logits within 1e-4 (relative)",
    "int8 onnx": "quantize with ties='even' (ONNX Runtime's rounding, as a user targeting it "
    "does) + export_onnx_int8 + ONNX Runtime: same top-1 as that model's integer path",
    "c": "export_c + gcc (build_and_run): logits bit-identical to the integer path",
    "chain": "prune_magnitude -> fold_batchnorm -> share_kmeans -> quantize -> pack -> unpack -> "
    "export_c (int8 ONNX without gcc): logits identical to the chain's own integer path",
}


class Finding(Exception):
    """A cell's outcome that is not `ok`: a short `label`, and an optional longer `detail`."""

    def __init__(self, label: str, detail: str = "") -> None:
        super().__init__(f"{label}: {detail}" if detail else label)
        self.label, self.detail = label, detail


def reason(exc: BaseException) -> Finding:
    """An exception as a Finding: its class, the first line of its message, and the line of
    netshrink that raised it (the innermost frame under src/netshrink)."""
    if isinstance(exc, Finding):
        return exc
    message = (str(exc).strip().splitlines() or [""])[0]
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/src/netshrink/" in f.filename]
    if ours:
        where = ours[-1].filename.split("/src/")[-1]
        message += f" (raised at {where}:{ours[-1].lineno}, {ours[-1].name}"
        graph = [f.line for f in frames if f.filename.startswith("<eval_with_key") and f.line]
        message += f"; in the fx graph at `{graph[-1].split(';')[0]}`)" if graph else ")"
    return Finding(type(exc).__name__, message)


def share_of(agree: torch.Tensor, what: str) -> None:
    """Raise a Finding unless every element of the boolean `agree` holds."""
    if not bool(agree.all()):
        raise Finding(f"{what} {agree.float().mean().item():.1%} of {agree.numel()}")


def prune(model: nn.Module) -> nn.Module:
    return ns.prune_magnitude(model, {"threshold": {"kind": "sparsity", "sparsity": SPARSITY}})


def share(model: nn.Module) -> nn.Module:
    return ns.share_kmeans(model, {"bits": SHARE_BITS}, progress=False)


def quantize(model: nn.Module, calibration: torch.Tensor, ties: str = "up") -> nn.Module:
    return ns.quantize(model, calibration, {"calibration_images": CALIBRATION, "ties": ties})


class Case:
    """One architecture: its float model (eval mode, never changed), the inputs, a work folder,
    and the 8-bit model and its integer path, each made once for the cells that need it."""

    def __init__(self, name: str, work: Path) -> None:
        self.name = name if name in ns.MODELS else f"arch_styles:{name}"
        self.spec = ns.ModelSpec(name=self.name, args=ZOO_ARGS.get(name, {}))
        self.allow, self.work, self.made = [self.name], work, {}
        torch.manual_seed(0)
        model = ns.build_model(
            self.spec, num_classes=CLASSES, in_channels=3, input_size=32, allow_import=self.allow
        )
        self.model = settle(model)
        self.x = torch.randn(INPUTS, *SHAPE, generator=torch.Generator().manual_seed(0))
        seed = torch.Generator().manual_seed(1)
        self.calibration = torch.randn(CALIBRATION, *SHAPE, generator=seed)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def once(self, what: str, make, own: bool):
        """`make()`, made once; when it failed, its exception for the cell that `own`s it and
        Finding("needs WHAT") for the others."""
        if what not in self.made:
            try:
                self.made[what] = make()
            except Exception as exc:  # noqa: BLE001 - kept; the cell that owns it reports it
                self.made[what] = exc
        failed = self.made[what]
        if isinstance(failed, Exception) and own:
            raise failed
        if isinstance(failed, Exception):
            raise Finding(f"needs {what}") from failed
        return failed

    def qmodel(self, own: bool = False) -> nn.Module:
        return self.once("quantize", lambda: quantize(self.model, self.calibration), own)

    def integer(self, own: bool = False):
        return self.once("integer", lambda: IntegerModel(self.qmodel()).run(self.x), own)

    def qmodel_even(self) -> nn.Module:
        """The 8-bit model with ties to even: what is exported for ONNX Runtime."""
        made = lambda: quantize(self.model, self.calibration, ties="even")  # noqa: E731
        return self.once("quantize (ties even)", made, True)

    def round_trip(self, model: nn.Module, file: str) -> nn.Module:
        path = self.work / file
        ns.pack(model, path, spec=self.spec, input_shape=SHAPE, num_classes=CLASSES)
        return ns.unpack(path, allow_import=self.allow)


@torch.no_grad()
def settle(model: nn.Module) -> nn.Module:
    """Random batch-norm affine parameters, and running statistics averaged over 4 batches of
    random images (as a trained model has them, so folding is not the identity)."""
    g = torch.Generator().manual_seed(3)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    model.train()
    for _ in range(4):
        model(torch.randn(16, *SHAPE, generator=g))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


@torch.no_grad()
def same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    share_of(torch.eq(a(x), b(x)).all(1), "identical on")


def onnx_run(path: Path, x: torch.Tensor) -> torch.Tensor:
    from netshrink.export.onnx import onnx_logits, onnx_session

    return torch.from_numpy(onnx_logits(onnx_session(path, threads=1), x))


def c_run(qmodel: nn.Module, work: Path, x: torch.Tensor) -> torch.Tensor:
    """The C export's integer logits on `x`, compiled and run with gcc."""
    from netshrink.export.c import build_and_run, quantize_input

    export = ns.export_c(qmodel, work / "c", SHAPE)
    return torch.from_numpy(build_and_run(export, quantize_input(x, export), work / "build"))


@torch.no_grad()
def check_pack(case: Case) -> None:
    same_outputs(case.model, case.round_trip(case.model, "float.nsk"), case.x)


@torch.no_grad()
def check_prune(case: Case) -> None:
    model = prune(case.fresh())
    weights = [m.weight for _, m in select_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    if abs(zeros - SPARSITY) > 0.01:
        raise Finding(f"sparsity {zeros:.1%}")
    share_of(model(case.x).isfinite().all(1), "finite on")


@torch.no_grad()
def check_share(case: Case) -> None:
    model = share(case.fresh())
    wide = [n for n, m in select_layers(model) if m.weight.unique().numel() > 2**SHARE_BITS]
    if wide:
        raise Finding(f"{len(wide)} layers not shared", ", ".join(wide))
    share_of(model(case.x).isfinite().all(1), "finite on")


@torch.no_grad()
def check_filters(case: Case) -> None:
    model = ns.prune_filters(case.fresh(), {"amount": FILTER_AMOUNT}, SHAPE)
    if ns.count_parameters(model).total >= ns.count_parameters(case.model).total:
        raise Finding("no parameter removed")
    same_outputs(model, case.round_trip(model, "filters.nsk"), case.x)


@torch.no_grad()
def check_fold(case: Case) -> None:
    folded = ns.fold_batchnorm(case.fresh())
    ref = case.model(case.x)
    diff = (folded(case.x) - ref).abs()
    share_of((diff <= 1e-4 * ref.abs().max()).all(1), "within 1e-4 on")


@torch.no_grad()
def check_quantize(case: Case) -> None:
    share_of(case.qmodel(own=True)(case.x).isfinite().all(1), "finite on")


@torch.no_grad()
def check_integer(case: Case) -> None:
    out = case.integer(own=True)
    if out.overflows:
        raise Finding("accumulator overflow", ", ".join(out.overflows))
    share_of(torch.eq(out.logits, case.qmodel()(case.x).double()).all(1), "bit-identical on")


@torch.no_grad()
def check_pack_q8(case: Case) -> None:
    same_outputs(case.qmodel(), case.round_trip(case.qmodel(), "q8.nsk"), case.x)


@torch.no_grad()
def check_onnx(case: Case) -> None:
    ours = case.model(case.x)
    theirs = onnx_run(ns.export_onnx(case.model, case.work / "fp32.onnx", SHAPE), case.x)
    share_of(ours.argmax(1) == theirs.argmax(1), "top-1")
    share_of(((ours - theirs).abs() <= 1e-4 * ours.abs().max()).all(1), "within 1e-4 on")


@torch.no_grad()
def check_int8_onnx(case: Case) -> None:
    qmodel = case.qmodel_even()
    theirs = onnx_run(ns.export_onnx_int8(qmodel, case.work / "int8.onnx", SHAPE), case.x)
    try:
        expected = IntegerModel(qmodel).run(case.x).logits
    except Exception:  # noqa: BLE001 - exported and run: compare with the fake-quantized model
        agree = (theirs.argmax(1) == qmodel(case.x).argmax(1)).float().mean().item()
        raise Finding("no integer path", f"top-1 vs the fake-quantized model {agree:.1%}") from None
    agree = theirs.argmax(1) == expected.argmax(1)
    if not bool(agree.all()):  # where the file first parts from the integer path, and why
        found = int8_agreement(qmodel, case.work / "int8.onnx", case.x).first
        detail = found.describe() if found is not None else ""
        raise Finding(f"top-1 {agree.float().mean().item():.1%} of {agree.numel()}", detail)


@torch.no_grad()
def check_c(case: Case) -> None:
    if shutil.which("gcc") is None:
        raise Finding("gcc not installed")
    logits = c_run(case.qmodel(), case.work, case.x)
    expected = case.integer().integers
    if expected is None:
        raise Finding("no integer logits", "the integer path ends in a float layer")
    share_of(torch.eq(logits.long(), expected).all(1), "bit-identical on")


def step(name: str, make):
    """`make()`; a failure becomes a Finding that names the step."""
    try:
        return make()
    except Exception as exc:  # noqa: BLE001 - named with the step it failed in
        found = reason(exc)
        raise Finding(f"{name}: {found.label}", found.detail) from exc


@torch.no_grad()
def check_chain(case: Case) -> None:
    model = step("prune", lambda: prune(case.fresh()))
    step("fold", lambda: ns.fold_batchnorm(model))
    step("share", lambda: share(model))
    qmodel = step("quantize", lambda: quantize(model, case.calibration))
    back = step("pack", lambda: case.round_trip(qmodel, "chain.nsk"))
    share_of(torch.eq(back(case.x), qmodel(case.x)).all(1), "unpacked identical on")
    if shutil.which("gcc") is None:  # the int8 ONNX file instead, compared on top-1
        path = case.work / "chain.int8.onnx"
        theirs = step("int8", lambda: onnx_run(ns.export_onnx_int8(back, path, SHAPE), case.x))
        ours = step("integer", lambda: IntegerModel(qmodel).run(case.x))
        share_of(theirs.argmax(1) == ours.logits.argmax(1), "int8 top-1")
        return
    theirs = step("c", lambda: c_run(back, case.work / "chain", case.x))
    ours = step("integer", lambda: IntegerModel(qmodel).run(case.x))
    if ours.integers is None:
        raise Finding("no integer logits", "the integer path ends in a float layer")
    share_of(torch.eq(theirs.long(), ours.integers).all(1), "C bit-identical on")


CHECKS = {
    "pack": check_pack,
    "prune": check_prune,
    "share": check_share,
    "filters": check_filters,
    "fold": check_fold,
    "quantize": check_quantize,
    "integer": check_integer,
    "pack q8": check_pack_q8,
    "onnx": check_onnx,
    "int8 onnx": check_int8_onnx,
    "c": check_c,
    "chain": check_chain,
}


class CellTimeout(BaseException):
    """A cell ran past its time: a BaseException, so no `except Exception` on the way (netshrink
    turns any tracing failure into UnsupportedLayerError) takes it for the cell's own error."""


def _alarm(signum, frame):
    raise CellTimeout()


def run_cell(check, case: Case, timeout: int) -> dict:
    """One cell: {"status": "ok"} or the Finding's label and detail; raises only CellTimeout."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        check(case)
        return {"status": "ok"}
    except Exception as exc:  # noqa: BLE001 - every failure is the cell's finding
        found = reason(exc)
        return {"status": found.label, "detail": found.detail}
    finally:
        signal.alarm(0)


def worker(name: str, out: Path, timeout: int, start: int) -> None:
    """Run the cells of one architecture from the `start`-th, writing `out` (JSON) before and
    after each; a timeout ends the process (whatever it interrupted may be left half done)."""
    torch.set_num_threads(1)
    row: dict = {"architecture": name, "cells": {}}
    with tempfile.TemporaryDirectory() as work:
        try:
            case = Case(name, Path(work))
            row["params"] = ns.count_parameters(case.model).total
        except Exception as exc:  # noqa: BLE001 - the whole row is then this reason
            found = reason(exc)
            row["cells"] = {c: {"status": "build failed", "detail": str(found)} for c in CHECKS}
            out.write_text(json.dumps(row))
            return
        for capability in list(CHECKS)[start:]:
            row["running"] = capability
            out.write_text(json.dumps(row))
            try:
                row["cells"][capability] = run_cell(CHECKS[capability], case, timeout)
            except CellTimeout:
                row["cells"][capability] = {"status": f"timeout ({timeout} s)"}
                out.write_text(json.dumps(row))
                sys.exit(3)
        out.write_text(json.dumps(row))


def attempt(name: str, timeout: int, start: int) -> tuple[dict, dict]:
    """One worker process from the `start`-th cell: its row, and what to say of the cell it was
    running if it died (its signal or exit status, and its last line of stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--worker", name, "--out", str(out)]
        command += ["--timeout", str(timeout), "--start", str(start)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NETSHRINK_PROGRESS": "0"}
        limit = timeout * (len(CHECKS) - start + 2)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
            died = {"status": f"worker exited {done.returncode}"}
            if done.returncode < 0:
                died["status"] = f"worker killed by {signal.Signals(-done.returncode).name}"
            died["detail"] = (done.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            died = {"status": f"worker timed out ({limit} s)"}
        empty = {"architecture": name, "cells": {}}
        return (json.loads(out.read_text()) if out.is_file() else empty), died


def run_architecture(name: str, timeout: int) -> dict:
    """Every cell of one architecture, in worker processes: a worker that crashes, hangs or
    times out costs its one cell, and a fresh worker goes on from the next."""
    row: dict = {"architecture": name, "cells": {}}
    while len(row["cells"]) < len(CHECKS):
        start = next(i for i, c in enumerate(CHECKS) if c not in row["cells"])
        part, died = attempt(name, timeout, start)
        row["cells"].update(part["cells"])
        row["params"] = part.get("params", row.get("params"))
        running = part.get("running")
        if running is not None and running not in row["cells"]:
            row["cells"][running] = died
        elif not part["cells"]:  # died before its first cell: nothing more to learn
            row["cells"].update({c: died for c in CHECKS if c not in row["cells"]})
    return row


def label(name: str) -> str:
    args = ZOO_ARGS.get(name)
    if name not in ns.MODELS:
        return f"arch_styles:{name}"
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")" if args else "")


def table_rows(results: list[dict]) -> tuple[list[list[str]], list[str]]:
    """Short cells (the label, `[n]` pointing at footnote n: the message, shortened to
    NOTE_CHARS; the JSON keeps it whole) and the footnotes."""
    notes: dict[str, int] = {}
    rows = []
    for result in results:
        params = result.get("params")
        cells = [label(result["architecture"]), "-" if params is None else f"{params:,}"]
        for capability in CHECKS:
            cell = result["cells"][capability]
            text, detail = cell["status"], cell.get("detail")
            if detail:
                text += f" [{notes.setdefault(detail, len(notes) + 1)}]"
            cells.append(text)
        rows.append(cells)
    short = [d if len(d) <= NOTE_CHARS else d[: NOTE_CHARS - 3] + "..." for d in notes]
    return rows, [f"[{n}] {d}" for n, d in enumerate(short, 1)]


def json_row(result: dict) -> dict:
    row = {"architecture": label(result["architecture"]), "params": result.get("params")}
    for capability in CHECKS:
        cell = result["cells"][capability]
        row[capability] = cell["status"] + (f": {cell['detail']}" if cell.get("detail") else "")
    row["target"] = "ok in every column"
    row["meets target"] = all(row[c] == "ok" for c in CHECKS)
    return row


NOTE_CHARS = 400
NOTES = (
    "Random weights, 3x32x32 inputs, 10 classes; batch-norm statistics settled on random images. "
    f"Compared on {INPUTS} random normal images (seed 0); quantize calibrates on {CALIBRATION} "
    "random normal images (seed 1), not data. A percentage is the share of the inputs that agree. "
    "Each architecture runs in worker processes, each cell under a time limit: a cell that crashes "
    "or hangs its worker is marked so, and a fresh worker goes on with the next cell. "
    "`needs X`: the cell needs what the X cell failed to make."
)


def markdown(columns, rows, footnotes, command: str, date: str) -> str:
    lines = ["## Architectures (bench/architectures.py)", "", f"Command: `{command}` ({date})", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines += ["", NOTES, "", "Columns:", ""]
    lines += [f"- {name}: {what}" for name, what in CAPABILITIES.items()]
    lines += ["", "Architectures: the zoo (netshrink.models.MODELS) at the widths shown; and, in the "
              "styles users bring (bench/arch_styles.py):", ""]  # fmt: skip
    lines += [f"- `arch_styles:{name}`: {factory.__doc__}" for name, factory in STYLES.items()]
    if footnotes:
        lines += ["", "Reasons (whole in bench/results/architectures.json):", ""]
        lines += [f"- {note}" for note in footnotes]
    return "\n".join(lines) + "\n"


def publish_matrix(results: list[dict], command: str | None = None) -> None:
    """Print the table, write bench/results/architectures.json and the block in the doc;
    `command`: what made the rows (default: this run's command line)."""
    command, date = command or command_line(), datetime.date.today().isoformat()
    columns = ["architecture", "params", *CHECKS]
    rows, footnotes = table_rows(results)
    table = Table(title="Architectures x capabilities (bench/architectures.py)")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console().print(table)
    for note in footnotes:
        console().print(note, markup=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"name": "architectures", "command": command, "date": date,
              "capabilities": CAPABILITIES, "notes": NOTES, "rows": [json_row(r) for r in results],
              "raw": results}  # fmt: skip
    (RESULTS / "architectures.json").write_text(json.dumps(result, indent=2) + "\n")
    section = markdown(columns, rows, footnotes, command, date)
    DOC.write_text(replace_block(DOC.read_text(), "architectures", section))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    clash = sorted(set(ns.MODELS) & set(STYLES))
    if clash:  # a style named like a zoo model would run the zoo's model twice
        raise SystemExit(f"arch_styles names {', '.join(clash)} like zoo models: rename them")
    names = [*ns.MODELS, *STYLES]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--timeout", type=int, default=120, help="seconds a cell may take")
    parser.add_argument("--worker", choices=names, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.out, args.timeout, args.start)
        return
    torch.set_num_threads(1)
    results = []
    for name in args.only:
        console().print(f"{label(name)} ...")
        results.append(run_architecture(name, args.timeout))
    if args.only == names:
        publish_matrix(results)
        return
    rows, earlier = merged(results, names)
    rerun = ", ".join(label(name) for name in args.only)
    publish_matrix(rows, f"{earlier}; the rows of {rerun} rerun by {command_line()}")


def merged(results: list[dict], names: list[str]) -> tuple[list[dict], str]:
    """`results` laid over the last published matrix (its other architectures kept, in the
    order of `names`), so that `--only` reruns a few rows without dropping the rest; and the
    command (with its date) that made the published rows."""
    path = RESULTS / "architectures.json"
    if not path.is_file():
        return results, "no earlier matrix"
    published = json.loads(path.read_text())
    by_label = {label(name): name for name in names}
    earlier = published.get("raw") or [_raw(row, by_label) for row in published["rows"]]
    rows = {r["architecture"]: r for r in earlier if r is not None}
    rows.update({r["architecture"]: r for r in results})
    made_by = f"{published['command']} ({published['date']})"
    return [rows[name] for name in names if name in rows], made_by


def _raw(row: dict, by_label: dict) -> dict | None:
    """A published row read back as run_architecture's result (files written before `raw`)."""
    name = by_label.get(row["architecture"])
    if name is None:
        return None
    cells = {}
    for capability in CHECKS:
        status, _, detail = str(row[capability]).partition(": ")
        cells[capability] = {"status": status, **({"detail": detail} if detail else {})}
    return {"architecture": name, "params": row.get("params"), "cells": cells}


if __name__ == "__main__":
    main()
