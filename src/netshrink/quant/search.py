"""Hybrid automatic bit-width search: per-layer bit widths for weights and activations under an
accuracy-loss budget (Al-Hami et al., "hybrid quantization with automatic tuning"; Ristretto's
search, Gysel et al. 2016; Kim et al.'s mixed 10-bit conv / 6-bit fc / 8-bit outputs).

The model is quantized once, at the start bits: calibration happens there, and every trial after
it only changes bit widths with `set_bits`, which re-derives fractional lengths from the weights
and from the calibration statistics kept in each quantizer. Every trial is one accuracy
measurement on a fixed, seeded subset of the validation split, so every decision is measured and
the returned configuration is one whose loss on that subset was measured within the budget.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import fx, nn

from ..budget import Points
from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..errors import ConfigError
from ..layers import unwrap
from ..loaders import LoaderSplits, as_data
from ..progress import make_progress
from ..stage import Stage
from ..train import evaluate
from .modules import ActQuant
from .plan import node_kind
from .quantize import QuantConfig, fixed_point_formats, quantize, set_bits

Kind = Literal["weights", "activations"]


class BitSearchConfig(Settings):
    """An accuracy-loss `budget` in top-1 points; bits start at `start_*` and go down to
    `min_*`; accuracy is measured on `eval_images` images (None: all) of `split`, a fixed seeded
    subset; `quant` holds everything else about the fixed-point model (calibration, float
    layers, bias and accumulator bits), and leaves the per-layer bits to the search."""

    budget: Points = 1.0
    start_weights: int = Field(8, ge=2, le=16)
    min_weights: int = Field(2, ge=2, le=16)
    start_activations: int = Field(8, ge=2, le=16)
    min_activations: int = Field(4, ge=2, le=16)
    split: Literal["val", "test"] = "val"
    eval_images: int | None = Field(None, ge=1)  # all: 2000 over-fit the subset
    quant: QuantConfig = QuantConfig()

    @model_validator(mode="after")
    def _check(self) -> "BitSearchConfig":
        if self.min_weights > self.start_weights or self.min_activations > self.start_activations:
            raise ValueError("min_weights / min_activations must not exceed the start bits")
        if self.quant.layer_weights or self.quant.layer_activations:
            raise ValueError("quant.layer_weights / layer_activations are what the search chooses")
        return self


@dataclass(frozen=True)
class LayerBits:
    """One row of the table: a quantized layer (or, with `weight_bits` None, an activation point
    that no layer produces, such as the input), its weight count and bits, the quantizer after
    it and that quantizer's bits and values per image."""

    name: str
    params: int
    weight_bits: int | None
    activation: str | None
    activation_bits: int | None
    activation_values: int


@dataclass(frozen=True)
class BitSearchResult:
    """The quantized model at the chosen bits, a QuantConfig that `quantize` turns into the same
    model, accuracies on the search subset (loss in top-1 points), the per-layer rows,
    parameter-weighted mean weight bits, activation bytes per image, and the trial count."""

    model: fx.GraphModule
    config: QuantConfig
    float_top1: float
    top1: float
    loss: float
    rows: tuple[LayerBits, ...]
    mean_weight_bits: float
    activation_bytes: float
    evaluations: int

    def table(self) -> str:
        """The rows as a Markdown table."""
        lines = [
            "| layer | weights | weight bits | activation | act. bits | values / image |",
            "| --- | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in self.rows:
            cells = (r.name, r.params, r.weight_bits, r.activation, r.activation_bits)
            text = ["-" if c is None else str(c) for c in cells]
            lines.append(f"| {' | '.join(text)} | {r.activation_values} |")
        return "\n".join(lines) + "\n"


@takes_mappings
def search_bits(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: BitSearchConfig = BitSearchConfig(),
    *,
    progress: bool = True,
) -> BitSearchResult:
    """Per-layer weight and activation bit widths that minimise weight bits, then activation
    memory, while the top-1 loss against the float model stays within `config.budget` points.

    Al-Hami et al.'s hybrid quantization tunes each layer's bits automatically; Ristretto
    (Gysel et al. 2016) lowers bits while accuracy holds; Kim et al. show that layers need
    different widths. Here weights are lowered first (they dominate storage), then activations,
    each by measured sensitivity:

    1. quantize once at the start bits and measure; if that already loses more than the budget,
       raise ConfigError;
    2. sweep: each layer alone is lowered one bit at a time, the others at the start bits, down
       to the last width that stays within the budget;
    3. combine every layer at its sweep minimum; while the loss exceeds the budget, raise by one
       bit the layer whose raise recovers the most accuracy per added bit (accuracy gained /
       parameters), measuring every candidate;
    4. squeeze: largest layers first, lower each further while the loss stays within budget.

    The same steps then run for the activation quantizers, costed by values per image. The
    returned configuration's loss is the one measured last, on the same subset.

    Example:
        >>> result = search_bits(model, data, BitSearchConfig(budget=1.0))
        >>> print(result.table())  # a row a layer: weight bits, activation bits
        >>> qmodel = quantize(model, data, result.config)  # the same model again
    """
    data = as_data(data)
    batches = search_batches(data, config)
    quant = config.quant.model_copy(
        update={"weights": config.start_weights, "activations": config.start_activations}
    )
    qmodel = quantize(model, data, quant)
    with make_progress(progress) as bar:
        task = bar.add_task("bit-width search", total=None, status="")
        trials = _Trials(
            qmodel, batches, config.budget, lambda s: bar.update(task, advance=1, status=s)
        )
        trials.reference = trials.count_correct(unwrap(model))
        _check_start(trials, trials.measure("weights", {}), config)
        rows = _rows(qmodel, batches[0][0][:1])
        weights = {r.name: r.params for r in rows if r.weight_bits is not None}
        chosen_w = _lower(trials, "weights", weights, config.start_weights, config.min_weights)
        values = {r.activation: r.activation_values for r in rows if r.activation is not None}
        start, low = config.start_activations, config.min_activations
        chosen_a = _lower(trials, "activations", values, start, low)
        correct = trials.measure("activations", chosen_a)
    if not trials.within(correct):
        raise AssertionError("internal: the search left the budget; please report this model")
    final = quant.model_validate(
        {**quant.model_dump(), "layer_weights": chosen_w, "layer_activations": chosen_a}
    )
    return _result(trials, final, _rows(qmodel, batches[0][0][:1]), correct)


def search_batches(data: DataSplits | LoaderSplits, config: BitSearchConfig) -> list[tuple]:
    """The search's fixed subset of `config.split` as normalized batches: `eval_images` images
    (all for None), for netshrink's data chosen by a permutation seeded with the data config's
    seed, for the user's own the first ones."""
    if not data.has(config.split):
        raise ConfigError(
            f'the "{config.split}" split is empty: give the data a val_fraction, or search on '
            'split="test" (which then no longer measures unseen data)'
        )
    seed = data.config.seed if data.config is not None else 0
    return data.subset(config.split, config.eval_images, seed=seed)


class _Trials:
    """Accuracy measurements of the quantized model at given bits, counted, on fixed batches."""

    def __init__(self, qmodel, batches, budget: float, status: Callable[[str], None]) -> None:
        self.qmodel, self.batches, self.budget, self.status = qmodel, batches, budget, status
        self.images = sum(len(y) for _, y in batches)
        self.reference = 0  # correct answers of the float model
        self.evaluations = 0

    def count_correct(self, model: nn.Module) -> int:
        # evaluate's top-1, not argmax: low-bit logits tie, and the two break ties differently
        result = evaluate(model, self.batches)
        return round(result.top1 * result.count)

    def measure(self, kind: Kind, bits: dict[str, int]) -> int:
        """Correct answers with `bits` for `kind` (the other kind as it is now)."""
        set_bits(self.qmodel, **{kind: bits})
        correct = self.count_correct(self.qmodel)
        self.evaluations += 1
        self.status(f"{kind}: loss {self.loss(correct):.2f} pt")
        return correct

    def loss(self, correct: int) -> float:
        return 100 * (self.reference - correct) / self.images

    def within(self, correct: int) -> bool:
        return self.loss(correct) <= self.budget


def _check_start(trials: _Trials, correct: int, config: BitSearchConfig) -> None:
    if not trials.within(correct):
        raise ConfigError(
            f"the start configuration ({config.start_weights}-bit weights, "
            f"{config.start_activations}-bit activations) already loses "
            f"{trials.loss(correct):.2f} top-1 points on the {config.split} subset, more than "
            f"the budget of {config.budget}: raise start_weights / start_activations, try "
            'another calibration (quant.calibrate="mse" or "percentile"), keep the sensitive '
            "layers in float (quant.float_layers), or allow a larger budget"
        )


def _lower(trials: _Trials, kind: Kind, costs: dict[str, int], start: int, low: int) -> dict:
    """Steps 2-4 of `search_bits` for one kind; the measured state at `start` is in budget."""
    bits = {name: start for name in costs}
    floors = {name: _sweep(trials, kind, bits, name, low) for name in costs}
    bits, correct = _repair(trials, kind, floors, costs, start)
    for name in sorted(costs, key=lambda n: -costs[n]):
        while bits[name] > low:
            trial = {**bits, name: bits[name] - 1}
            if not trials.within(trials.measure(kind, trial)):
                break
            bits = trial
    set_bits(trials.qmodel, **{kind: bits})  # the last trial may have been a rejected one
    return bits


def _sweep(trials: _Trials, kind: Kind, bits: dict, name: str, low: int) -> int:
    """The lowest width of `name` alone (the rest as in `bits`) whose loss stays in budget."""
    best = bits[name]
    for width in range(bits[name] - 1, low - 1, -1):
        if not trials.within(trials.measure(kind, {**bits, name: width})):
            break
        best = width
    return best


def _repair(trials: _Trials, kind: Kind, bits: dict, costs: dict, start: int):
    """Raise one bit at a time, the best measured gain per added bit first, until in budget."""
    bits = dict(bits)
    correct = trials.measure(kind, bits)
    while not trials.within(correct):
        options = [name for name in bits if bits[name] < start]
        if not options:
            raise AssertionError("internal: the start bits measured differently twice")
        measured = {n: trials.measure(kind, {**bits, n: bits[n] + 1}) for n in options}

        def score(name: str) -> tuple:
            gain = measured[name] - correct
            return (gain > 0, gain / max(costs[name], 1) if gain > 0 else gain, -costs[name])

        best = max(options, key=score)
        bits[best] += 1
        correct = measured[best]
    return bits, correct


def _rows(qmodel: fx.GraphModule, image: torch.Tensor) -> tuple[LayerBits, ...]:
    """A row a quantized layer (graph order), then a row a point that no layer produces."""
    formats = fixed_point_formats(qmodel)
    modules = dict(qmodel.named_modules())
    values = _values_per_image(qmodel, image)
    after = {}  # layer -> the quantizer that requantizes its output
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], ActQuant):
            source = node.args[0]
            if node_kind(source, modules) in ("relu", "relu6"):
                source = source.args[0]
            if source.op == "call_module" and source.target in formats.weights:
                after[source.target] = node.target
    rows = []
    for name, spec in formats.weights.items():
        point = after.get(name)
        act = formats.activations[point].bits if point else None
        params = modules[name].weight.numel()
        rows.append(LayerBits(name, params, spec.bits, point, act, values.get(point, 0)))
    for point, spec in formats.activations.items():
        if point not in after.values():
            rows.append(LayerBits(point, 0, None, point, spec.bits, values[point]))
    return tuple(rows)


@torch.inference_mode()
def _values_per_image(qmodel: fx.GraphModule, image: torch.Tensor) -> dict[str, int]:
    values, handles = {}, []
    for name, module in qmodel.named_modules():
        if isinstance(module, ActQuant):

            def hook(_module, _inputs, output, name=name):
                values[name] = output[0].numel()

            handles.append(module.register_forward_hook(hook))
    was_training = qmodel.training
    try:
        qmodel.eval()(image)
    finally:
        qmodel.train(was_training)
        for handle in handles:
            handle.remove()
    return values


def _result(trials: _Trials, config: QuantConfig, rows, correct: int) -> BitSearchResult:
    params = sum(r.params for r in rows if r.weight_bits is not None)
    weight_bits = sum(r.params * r.weight_bits for r in rows if r.weight_bits is not None)
    activation_bits = sum(r.activation_values * r.activation_bits for r in rows if r.activation)
    return BitSearchResult(
        model=trials.qmodel.eval(),
        config=config,
        float_top1=trials.reference / trials.images,
        top1=correct / trials.images,
        loss=trials.loss(correct),
        rows=rows,
        mean_weight_bits=weight_bits / params if params else 0.0,
        activation_bytes=activation_bits / 8,
        evaluations=trials.evaluations,
    )


class SearchBitsStage(Stage):
    """Per-layer bit widths within an accuracy budget (Al-Hami's hybrid search)."""

    folds_batchnorm: ClassVar[bool] = True
    fixed_point: ClassVar[bool] = True
    method: Literal["search_bits"]
    takes_layers: ClassVar[bool] = False
    config: BitSearchConfig = BitSearchConfig()

    def apply(self, model, ctx):
        return search_bits(model, ctx.data, self.config, progress=ctx.progress).model
