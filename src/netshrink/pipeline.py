"""Run a recipe: baseline, stages, one packed file and a report, resumable per stage.

    run_dir/
      recipe.yaml        the recipe as run
      state.json         the finished stages: key, checkpoint, measurement
      stages/NN-name.*   a checkpoint after each stage (safetensors + JSON)
      model.nsk          the packed model
      c/, model.int8.onnx, model.onnx   what the recipe's `export:` deploys (netshrink.deploy)
      report.json, report.md, *.png

After each stage the model is saved and the next stage starts from the checkpoint read back
(masks and scalar codebooks re-attached as they were; a vector codebook is kept by the checkpoint
itself). A resumed run therefore continues from
exactly what an uninterrupted one continues from, and with every stage seeded by its position
it writes the same file byte for byte. A stage's key hashes the data, the baseline and every
stage up to it, so editing stage 3 of a recipe re-runs stages 3 onward and keeps 1 and 2. Every
file is written atomically: an interrupted run never leaves a truncated checkpoint, state,
`.nsk` or report. Under torchrun every process runs the stages and only rank 0 writes.

The accuracy the report gives for the packed file is measured on the model decoded from it.
"""

import hashlib
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict
from torch import nn

from .baseline import cache_stem, cached_baseline, is_cached
from .checkpoint import (
    CheckpointMeta,
    checkpoint_paths,
    has_codebook,
    load_checkpoint,
    restore_shared,
    save_checkpoint,
)
from .codec import pack, packed_bytes, unpack
from .data import DataSplits, load_data
from .deploy import Artifact, export_artifacts, packed_artifact, print_artifacts
from .device import resolve_device
from .errors import BudgetError, ConfigError
from .files import atomic_write, directory_lock
from .layers import select_layers
from .measure import Measurement, dense_bytes, measure
from .methods import plan_stages, run_stage
from .models.registry import AllowImport, allowed_imports
from .prune import restore_masks
from .prune.mask import get_mask
from .recipe import Recipe
from .report import FinalRecord, ReportStage, RunReport, console, print_measurements, render_report
from .stage import StageContext, with_seed
from .train import evaluate, init_distributed, is_main_process

STATE_FORMAT = "netshrink-run"
KEY_VERSION = 1  # bump when a stage's meaning changes, so old checkpoints are not reused


class StageRecord(BaseModel):
    """A finished stage as state.json and report.json keep it. `masked` / `shared`: the layers
    whose weights carried a pruning mask / a scalar codebook, re-attached when it is read back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    method: str
    key: str | None
    checkpoint: str | None
    measurement: dict
    val_top1: float | None
    seconds: float
    masked: list[str] = []
    shared: list[str] = []
    notes: dict = {}  # what the stage left for the report (a sensitivity's curves)


@dataclass
class RunResult:
    """What `run_recipe` made: the run directory, the packed file, the stage records (baseline
    first, the packed file last) and the model decoded from the file (with report=False: no
    file, the stages' records and the last stage's model)."""

    directory: Path
    file: Path | None  # None: a run with report=False packs nothing
    stages: list[StageRecord]
    model: nn.Module
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def measurements(self) -> list[Measurement]:
        return [Measurement(**record.measurement) for record in self.stages]


def run_recipe(
    recipe: Recipe,
    directory: str | Path,
    *,
    recipe_text: str | None = None,
    cache_dir: Path | None = None,
    latency: bool = True,
    progress: bool = True,
    allow_import: AllowImport = (),
    restart: bool = False,
    device: str | None = None,
    report: bool = True,
) -> RunResult:
    """Run `recipe` into `directory`, resuming after its last finished stage when the directory
    holds an earlier run of the same recipe (stages whose key changed are run again).
    `progress=False`: no bars, no stage lines, no table (the files are written all the same).
    A recipe is a file like any other: a baseline named by an import path
    (`package.module:factory`) is built only when `allow_import` lists that exact name.
    `restart=True` forgets the earlier run first. The directory is locked while the run works
    in it: a second run there raises DirectoryInUseError at once. `device` overrides the
    recipe's: stages train and measure there, files are written from the CPU.
    `report=False` is a run that chooses a setting (netshrink.sweep): its stages are measured on
    the validation split only, the test split is never read, nothing is packed or reported. A
    later reporting run that resumes those stages measures them on the test split first.

    Example:
        >>> result = run_recipe(load_recipe("recipes/deep-compression-lenet5.yaml"), "runs/dc")
        >>> result.file, result.stages[-1].measurement["top1"]
    """
    directory = Path(directory)
    device = resolve_device(device or recipe.device)
    init_distributed(device)
    # one run at a time in a directory: two would overwrite each other's stages and state
    with directory_lock(directory) if is_main_process() else nullcontext():
        if restart and is_main_process():
            _forget_run(directory)
        _sync()
        trust = allowed_imports(allow_import)
        data = load_data(recipe.data)
        done = _finished(directory, recipe)
        if is_main_process():
            text = recipe_text or yaml.safe_dump(recipe.as_written(), sort_keys=False)
            atomic_write(directory / "recipe.yaml", lambda tmp: tmp.write_text(text))
        if report and any(record.measurement.get("top1") is None for record in done):
            # stages a validation-only run (a sweep) left without a test top-1 are measured now
            done = [_with_test(record, directory, data, trust, device) for record in done]
            _save_state(directory, done)
        records, ctx = _baseline(
            recipe, data, directory, done, cache_dir, latency, progress, trust, device, report
        )
        run = _Run(recipe, data, directory, ctx, records, latency, trust, device, report)
        for index, stage in enumerate(plan_stages(recipe.stages), start=1):
            key = stage_key(recipe, index)
            if index < len(done) and done[index].key == key:
                records.append(done[index])
                _say(progress, f"stage {index}/{len(recipe.stages)} {stage.title}: resumed")
                continue
            run.stage(index, stage, key)
        return run.pack() if report else run.unreported()


def stage_key(recipe: Recipe, index: int) -> str:
    """A hash of everything that decides the model after stage `index` (0: the baseline)."""
    parts = [
        KEY_VERSION,
        recipe.seed,
        recipe.data.model_dump(mode="json", exclude={"workers"}),  # never changes a result
        recipe.baseline.model_dump(mode="json"),
        [stage.model_dump(mode="json") for stage in recipe.stages[:index]],
    ]
    if recipe.baseline.checkpoint is not None:  # a checkpoint retrained in place is another start
        weights = checkpoint_paths(recipe.baseline.checkpoint)[0]
        parts.append(hashlib.sha256(weights.read_bytes()).hexdigest())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _finished(directory: Path, recipe: Recipe) -> list[StageRecord]:
    """The finished stages of an earlier run in `directory` that this recipe can reuse: the
    longest prefix whose keys match and whose checkpoints are all there."""
    path = directory / "state.json"
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        records = [StageRecord.model_validate(r) for r in state["stages"]]
    except (ValueError, KeyError, TypeError):
        return []  # not ours or from another version: start afresh rather than guess
    reusable = []
    for index, record in enumerate(records):
        stem = directory / (record.checkpoint or "")
        if index > len(recipe.stages) or record.key != stage_key(recipe, index):
            break
        if not all(p.is_file() for p in checkpoint_paths(stem)):
            break
        reusable.append(record)
    return reusable


def reuse_stages(directory: str | Path, recipe: Recipe, sources) -> int:
    """Start the new run `directory` of `recipe` from the finished stages of the earlier run,
    among the run folders `sources`, that it can reuse the most of (their longest prefix of
    matching keys): their checkpoints hard-linked (copied where links fail; every later write
    replaces a file, so the source run is never changed) and a state.json naming them. The
    number of stages reused (0: nothing to reuse, nothing written)."""
    directory = Path(directory)
    found = [(Path(source), _finished(Path(source), recipe)) for source in sources]
    source, records = max(found, key=lambda item: len(item[1]), default=(None, []))
    if not records:
        return 0
    for record in records:
        for path in checkpoint_paths(source / record.checkpoint):
            target = directory / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system, or one without links
                shutil.copy2(path, target)
    _save_state(directory, records)
    return len(records)


def _baseline(
    recipe, data, directory, done, cache_dir, latency, progress, allow_import, device, test
):
    """Stage 0: the baseline trained (or loaded from the cache) or read from a checkpoint, saved
    into the run, measured; then read back like every stage, so every run starts alike."""
    key = stage_key(recipe, 0)
    stem = directory / "stages" / "00-baseline"
    if done and done[0].key == key:
        record = done[0]
        _say(progress, f"baseline: resumed from {stem} (an earlier run of this recipe)")
    else:
        start = time.perf_counter()
        if recipe.baseline.checkpoint is not None:
            _say(progress, f"baseline: the checkpoint {recipe.baseline.checkpoint}")
            model, meta = load_checkpoint(recipe.baseline.checkpoint, allow_import=allow_import)
            model.to(device)
        else:
            spec, fit_config = recipe.baseline.spec, recipe.baseline.fit
            cached = cache_stem(spec, data.config, fit_config, cache_dir)
            _say(
                progress,
                f"baseline: {spec.name} loaded from the cache, {cached}"
                if is_cached(cached)
                else f"baseline: training {spec.name}, {fit_config.epochs} epoch(s) "
                f"(kept in the cache, {cached}, for the next run)",
            )
            model, meta, _ = cached_baseline(
                spec,
                data,
                fit_config,
                cache_dir=cache_dir,
                progress=progress,
                allow_import=allow_import,
                device=device,
            )
        if tuple(meta.input_shape) != data.input_shape:
            raise ConfigError(
                f"the baseline takes {tuple(meta.input_shape)} images but the data gives "
                f"{data.input_shape}: set data.image_size"
            )
        meta = meta.model_copy(update={"data": data.config})
        size = len(packed_bytes(model, recipe.pack, meta=meta))
        record = _finish(
            model, "baseline", "baseline", key, stem, data, None, latency, start, size, test
        )
        _save(model, meta, stem)
        _save_state(directory, [record])
    model, meta = _read_back(directory, record, allow_import)
    ctx = StageContext(data, model.to(device), meta.fit or recipe.baseline.fit, progress)
    if progress:
        _announce(0, len(recipe.stages), "baseline", record)
    return [record], ctx


class _Run:
    """The state a run carries from stage to stage."""

    def __init__(self, recipe, data, directory, ctx, records, latency, allow_import, device, test):
        self.recipe, self.data, self.directory = recipe, data, directory
        self.ctx, self.records, self.latency = ctx, records, latency
        self.allow_import, self.device, self.test = allow_import, device, test
        self.baseline_bytes = dense_bytes(ctx.baseline)

    def stage(self, index: int, stage, key: str) -> None:
        """Run one stage from the previous stage's checkpoint, check its budget, save it."""
        model, meta = _read_back(self.directory, self.records[-1], self.allow_import)
        model.to(self.device)
        torch.manual_seed(self.recipe.seed + index)
        start = time.perf_counter()
        if is_main_process() and self.ctx.progress:
            folds = ""
            if getattr(stage, "fold_batchnorm", False) and _has_batchnorm(model):
                folds = ", batch norm folded first"
            console().rule(
                f"stage {index}/{len(self.recipe.stages)}: {stage.title} ({stage.method}{folds})"
            )
        self.ctx.notes = {}
        stage = with_seed(stage, self.recipe.seed)
        model = run_stage(model, stage, self.ctx)
        stem = self.directory / "stages" / f"{index:02d}-{stage.title}"
        record = _finish(
            model,
            stage.title,
            stage.method,
            key,
            stem,
            self.data,
            self.baseline_bytes,
            self.latency,
            start,
            len(packed_bytes(model, self.recipe.pack, meta=meta)),  # the file pack would write
            self.test,
        )
        record = record.model_copy(update={"notes": self.ctx.notes})
        self._check_budget(stage, record)
        _save(model, meta, stem)
        self.records.append(record)
        _save_state(self.directory, self.records)
        if self.ctx.progress:
            _announce(index, len(self.recipe.stages), stage.title, record)

    def _check_budget(self, stage, record: StageRecord) -> None:
        base = self.records[0].val_top1
        if stage.budget is None or base is None or record.val_top1 is None:
            return
        lost = 100 * (base - record.val_top1)
        if lost > stage.budget:
            raise BudgetError(
                f"stage {stage.title} left validation top-1 at {record.val_top1:.2%}, "
                f"{lost:.2f} pt below the baseline's {base:.2%} (budget {stage.budget:g} pt). "
                "Fine-tune it longer or compress it less; the stages before it are saved, so "
                "running the edited recipe again starts from them"
            )

    def unreported(self) -> RunResult:
        """A validation-only run's result: the stages' records and the last stage's model."""
        model, _ = _read_back(self.directory, self.records[-1], self.allow_import)
        return RunResult(self.directory, None, list(self.records), model.to(self.device))

    def pack(self) -> RunResult:
        """Pack the last stage's model, measure the model decoded from the file, report."""
        model, meta = _read_back(self.directory, self.records[-1], self.allow_import)
        path = self.directory / "model.nsk"
        start = time.perf_counter()
        if is_main_process():
            pack(model, path, self.recipe.pack, meta=meta)
        _sync()
        decoded = unpack(path, allow_import=self.allow_import)
        artifacts = []
        if self.recipe.export.wanted and is_main_process():  # from the file, on the CPU
            artifacts = export_artifacts(decoded, self.directory, self.recipe.export, self.data)
        decoded.to(self.device)
        row = measure(
            decoded,
            stage="packed (.nsk)",
            input_shape=self.data.input_shape,
            test=self.data.loader("test", 256),
            size_bytes=path.stat().st_size,
            baseline_bytes=self.baseline_bytes,
            latency=self.latency,
        )
        record = StageRecord(
            name="packed",
            method="pack",
            key=None,
            checkpoint=None,
            measurement=row.to_json(),
            val_top1=_val_top1(decoded, self.data),
            seconds=time.perf_counter() - start,
        )
        result = RunResult(self.directory, path, [*self.records, record], decoded, artifacts)
        if is_main_process():
            _write_report(self.directory, self.recipe, result, row, self.allow_import)
        if is_main_process() and self.ctx.progress:
            print_measurements(result.measurements, title=f"{self.recipe.name}: {path}")
            if artifacts:
                print_artifacts(artifacts, nsk=packed_artifact(path, row.top1))
        return result


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _finish(
    model, name, method, key, stem, data, baseline_bytes, latency, start, size, test
) -> StageRecord:
    """Measure a stage's model (test split unless `test` is False; validation top-1 for budgets)
    into its record, which names its checkpoint `stem` and what to re-attach when that is read
    back. `size`: the bytes of the .nsk file the recipe's pack config would write for the model
    (codec.packed_bytes)."""
    row = measure(
        model,
        stage=name,
        input_shape=data.input_shape,
        test=data.loader("test", 256) if test else None,
        size_bytes=size,
        baseline_bytes=baseline_bytes,
        latency=latency,
    )
    layers = select_layers(model, scales=True)
    return StageRecord(
        name=name,
        method=method,
        key=key,
        checkpoint=str(stem.relative_to(stem.parent.parent)),
        measurement=row.to_json(),
        val_top1=_val_top1(model, data),
        seconds=time.perf_counter() - start,
        masked=[n for n, m in layers if get_mask(m) is not None],
        shared=[n for n, m in layers if has_codebook(m)],
    )


def _with_test(record: StageRecord, directory, data, allow_import, device) -> StageRecord:
    """`record` with its test top-1 / top-5, measured now if a validation-only run (report=False)
    left them out."""
    if record.measurement.get("top1") is not None:
        return record
    model, _ = _read_back(directory, record, allow_import)
    accuracy = evaluate(model.to(device), data.loader("test", 256))
    measurement = {**record.measurement, "top1": accuracy.top1, "top5": accuracy.top5}
    return record.model_copy(update={"measurement": measurement})


def _save(model: nn.Module, meta: CheckpointMeta, stem: Path) -> None:
    if is_main_process():
        save_checkpoint(model, stem, meta)
    _sync()


def _read_back(
    directory: Path, record: StageRecord, allow_import: AllowImport
) -> tuple[nn.Module, CheckpointMeta]:
    """A stage's checkpoint as the next stage starts from it: masks and scalar codebooks
    re-attached where the stage had them (a checkpoint stores values, not parametrizations,
    except VectorCodebooks, which load_checkpoint gives back)."""
    model, meta = load_checkpoint(directory / record.checkpoint, allow_import=allow_import)
    restore_shared(model, record.shared, where=str(directory / record.checkpoint))
    restore_masks(model, [(n, model.get_submodule(n)) for n in record.masked])
    return model.eval(), meta


def _val_top1(model: nn.Module, data: DataSplits) -> float | None:
    return evaluate(model, data.loader("val", 256)).top1 if data.has("val") else None


def _save_state(directory: Path, records: list[StageRecord]) -> None:
    if not is_main_process():
        return
    state = {"format": STATE_FORMAT, "stages": [r.model_dump(mode="json") for r in records]}
    text = json.dumps(state, indent=2) + "\n"
    atomic_write(directory / "state.json", lambda tmp: tmp.write_text(text))


def _say(progress: bool, text: str) -> None:
    """One line of what the run is doing (rank 0 only; not with progress=False)."""
    if progress and is_main_process():
        console().print(text)


def _announce(index: int, total: int, name: str, record: StageRecord) -> None:
    if not is_main_process():
        return
    m = record.measurement
    if m["top1"] is None and record.val_top1 is not None:  # a validation-only run (a sweep)
        accuracy = f"validation top-1 {record.val_top1:.2%}"
    else:
        accuracy = "test top-1 " + ("-" if m["top1"] is None else f"{m['top1']:.2%}")
    console().print(
        f"stage {index}/{total} {name}: {accuracy}, {m['size_bytes']:,} bytes "
        f"({m['compression_ratio']:.1f}x), {record.seconds:.1f} s"
    )


def _write_report(directory, recipe, result: RunResult, row, allow_import) -> None:
    """report.json in netshrink.report.run's schema (a stage's own fields beyond it are left out), then
    report.md and the plots from it."""
    stages, path = result.stages, result.file
    report = RunReport(
        format="netshrink-report",
        version=1,
        name=recipe.name,
        recipe="recipe.yaml",
        model=recipe.baseline.model or str(recipe.baseline.checkpoint),
        data=recipe.data.source,
        date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        stages=[ReportStage.model_validate(r.model_dump()) for r in stages],
        final=FinalRecord(file=path.name, bytes=path.stat().st_size, top1=row.top1, top5=row.top5),
        sensitivity=next(
            (r.notes["sensitivity"] for r in reversed(stages) if "sensitivity" in r.notes), None
        ),
        artifacts=[packed_artifact(path, row.top1), *result.artifacts] if result.artifacts else [],
    )
    text = report.model_dump_json(indent=2) + "\n"
    atomic_write(directory / "report.json", lambda tmp: tmp.write_text(text))
    render_report(directory, allow_import=allow_import)


def _sync() -> None:
    """Wait until rank 0 has written what the others are about to read (under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def clear_run(directory: Path) -> None:
    """Forget an earlier run in `directory` (what `run_recipe(..., restart=True)` does first);
    DirectoryInUseError while a run is going on there, whose files this would pull from under
    it."""
    if directory.is_dir() and is_main_process():
        with directory_lock(directory):
            _forget_run(directory)


def _forget_run(directory: Path) -> None:
    for name in ("state.json", "model.nsk", "report.json", "report.md"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / "stages", ignore_errors=True)
