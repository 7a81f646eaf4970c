"""Checkpoints: weights in safetensors plus a JSON sidecar; loading never unpickles.

A checkpoint `run/model` is two files: `run/model.safetensors` (the state dict) and
`run/model.json` (what the weights are: the architecture as a zoo name or import path with its
JSON arguments, the input shape, the data set, the training settings and the measured accuracy).
Loading rebuilds the architecture from the sidecar, replays the structural edits recorded there
(filter pruning's kept channels; netshrink.edits, netshrink.replay), and loads the tensors into it, strictly. A
file that is a pickle (`torch.save`) is refused before anything parses it.

A checkpoint stores what the forward pass computes, not parametrizations, with one exception:
a weight that a VectorCodebook computes (product / residual quantization) also stores the
codebook's own tensors, listed in the sidecar's `vector` (version 2), because its codebooks
cannot be read off the values; loading checks them against the weight and re-attaches it.
"""

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import ValidationError, model_validator
from torch import nn
from torch.nn.utils import parametrize

from .config import Config, takes_mappings
from .data import DataConfig
from .edits import MAX_EDITS, Edit, check_edit_counts, structural_edits
from .errors import ConfigError, CorruptFileError, LimitError, UnsupportedLayerError
from .files import atomic_write, read_safetensors, write_safetensors
from .models import ModelSpec, build_model
from .models.registry import AllowImport
from .quant.quantize import weight_quant
from .replay import replay_edits
from .share.codebooks import SHARED, ScalarCodebook, VectorCodebook, attach, restore_codebook
from .share.vq import Axis
from .train import FitConfig
from .untrusted import (
    MAX_SIDECAR_BYTES,
    ClassCount,
    InputShape,
    at_most,
    build_skeleton,
    check_skeleton,
)

FORMAT = "netshrink-checkpoint"
# A VectorCodebook with more stages is saved as its values, as the .nsk's `vector` encoding
# stores it (codec.shared.MAX_STAGES): decoding gathers the padded weight once a stage.
MAX_VECTOR_STAGES = 16
VECTOR_TENSORS = ("codebooks", "indices", "mask")


class VectorLayer(Config):
    """A layer whose weight a VectorCodebook computes: its codebooks (stages, segments, k,
    segment; the weight's dtype), indices (stages, segments, vectors; int64) and mask (the
    weight's shape; bool) are stored beside the weights under `vector_keys(layer)`."""

    layer: str
    axis: Axis


class CheckpointMeta(Config):
    """The JSON sidecar: everything needed to rebuild the model, and what it measured."""

    format: Literal["netshrink-checkpoint"] = FORMAT
    version: Literal[1, 2] = 1  # 2: the checkpoint stores vector codebooks (`vector`)
    model: ModelSpec
    input_shape: InputShape
    num_classes: ClassCount
    data: DataConfig | None = None
    fit: FitConfig | None = None
    metrics: dict[str, float] = {}
    # structural edits, replayed on the architecture before the weights
    edits: Annotated[list[Edit], at_most(MAX_EDITS)] = []
    # layers whose weight is a scalar codebook (k-means sharing): a checkpoint stores the values
    # it computes, and `restore_shared` re-attaches the codebook so that later methods keep it
    shared: Annotated[list[str], at_most(MAX_EDITS)] = []
    # layers whose weight is a VectorCodebook (PQ / RQ), whose tensors the checkpoint stores;
    # left out of the JSON when empty, so a checkpoint without them is version 1 as before
    vector: Annotated[list[VectorLayer], at_most(MAX_EDITS)] = []

    @model_validator(mode="after")
    def _vector_is_version_2(self):
        if (self.version == 2) != bool(self.vector):
            raise ValueError("version 2 is a checkpoint with vector codebooks, and only that")
        if len({v.layer for v in self.vector}) != len(self.vector):
            raise ValueError("vector lists a layer twice")
        return self


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint named by either file or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


@takes_mappings
def save_checkpoint(model: nn.Module, path: str | Path, meta: CheckpointMeta) -> Path:
    """Write `model`'s state dict and `meta`, with the model's structural edits in the sidecar;
    each file is replaced atomically. Returns the stem. A VectorCodebook's tensors are stored too
    (`vector_layers`), so that loading gives it back."""
    shared = [name for name, module in model.named_modules() if has_codebook(module)]
    vectors = vector_layers(model)
    listed = [VectorLayer(layer=name, axis=p.axis) for name, p in vectors]
    update = {"edits": structural_edits(model), "shared": shared, "vector": listed}
    meta = meta.model_copy(update=update | {"version": 2 if vectors else 1})
    weights, sidecar = checkpoint_paths(path)
    fields = meta.model_dump(mode="json", exclude=set() if vectors else {"vector"})
    text = json.dumps(fields, indent=2, sort_keys=True) + "\n"
    check_edit_counts(meta.edits)  # what load_checkpoint would refuse is never written
    if len(text.encode()) > MAX_SIDECAR_BYTES:
        raise ConfigError(f"cannot save {sidecar}: its sidecar is over {MAX_SIDECAR_BYTES:,} bytes")
    weights.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage; a contiguous copy of each tensor is exact.
    state = effective_state_dict(model) | vector_tensors(vectors)
    tensors = {k: v.contiguous().clone() for k, v in state.items()}
    write_safetensors(weights, tensors, metadata={"format": FORMAT})
    atomic_write(sidecar, lambda tmp: tmp.write_text(text))
    return weights.with_suffix("")


def has_codebook(module: nn.Module, kinds: tuple[type, ...] = (ScalarCodebook,)) -> bool:
    """Whether `module`'s weight is computed by a codebook of `kinds` (default: a scalar codebook,
    k-means weight sharing; `share.codebooks.SHARED`: any)."""
    chain = getattr(getattr(module, "parametrizations", None), "weight", None)
    return chain is not None and any(isinstance(p, kinds) for p in chain)


def vector_layers(model: nn.Module) -> list[tuple[str, VectorCodebook]]:
    """(layer, codebook) of every weight that a VectorCodebook alone computes, with at most
    MAX_VECTOR_STAGES stages: what a checkpoint stores the codebook of (under another
    parametrization, or past that bound, the weight is stored as its values only)."""
    found = []
    for name, module in model.named_modules():
        chain = getattr(getattr(module, "parametrizations", None), "weight", None)
        if chain is not None and len(chain) == 1 and isinstance(chain[0], VectorCodebook):
            if len(chain[0].codebooks) <= MAX_VECTOR_STAGES:
                found.append((name, chain[0]))
    return found


def vector_keys(layer: str) -> tuple[str, str, str]:
    """The names a checkpoint stores a layer's VectorCodebook tensors under (codebooks,
    indices, mask): their names in the live model's state dict."""
    prefix = f"{layer}." if layer else ""
    return tuple(f"{prefix}parametrizations.weight.0.{name}" for name in VECTOR_TENSORS)


def vector_tensors(vectors: list[tuple[str, VectorCodebook]]) -> dict[str, torch.Tensor]:
    """The tensors of `vector_layers`, by `vector_keys`: the mask as bool."""
    state = {}
    for name, p in vectors:
        values = (p.codebooks.detach(), p.indices.to(torch.int64), p.mask.detach() != 0)
        state |= {key: t.cpu() for key, t in zip(vector_keys(name), values)}
    return state


def restore_shared(model: nn.Module, names: list[str], where: str = "checkpoint") -> None:
    """Re-attach a scalar codebook to each layer of `names` (a sidecar's `shared`, a run's
    record) whose weight is not already shared or on a fixed-point grid (its own codebook), so
    that fine-tuning trains the centroids and batch-norm folding refuses to scale them.
    CorruptFileError for a name that is not a layer with a weight. A layer that has a codebook
    of any kind already (a VectorCodebook from the checkpoint) keeps it."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise CorruptFileError(f"{where}: shared layer {name!r} is not a layer of the model")
        if not has_codebook(module, SHARED) and weight_quant(module) is None:
            restore_codebook(module)


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the forward pass sees it, loadable into the unparametrized architecture.

    A parametrized tensor (a pruning mask, a codebook) is stored under its own name with the value
    it computes; its dense `original` and the parametrization's buffers are not stored, so a
    compressed model's checkpoint is never larger than the dense one.
    """
    state = {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if "parametrizations" not in k.split(".")
    }
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            for tensor_name in module.parametrizations:
                state[prefix + tensor_name] = getattr(module, tensor_name).detach().cpu()
    return state


def load_checkpoint(
    path: str | Path, *, allow_import: AllowImport = ()
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode), with the
    VectorCodebooks it stores re-attached.

    A sidecar naming an import path (`package.module:factory`) is built only when that exact
    name is in `allow_import` (netshrink.models.registry's import policy)."""
    weights, sidecar = checkpoint_paths(path)
    meta = read_meta(sidecar)
    # safetensors checks that every tensor's bytes are in the file: loading takes at most its size
    tensors = read_safetensors(weights)
    vectors = _take_vector_tensors(tensors, meta.vector, weights)
    # the sidecar's sizes are only claims: build on the meta device and compare before allocating
    skeleton = build_skeleton(
        lambda: _build(meta, sidecar, allow_import),
        meta.edits,
        str(sidecar),
        "its model spec",
        replay=replay_edits,
    )
    check_skeleton(skeleton, {k: tuple(v.shape) for k, v in tensors.items()}, str(weights))
    model = _build(meta, sidecar, allow_import)
    try:
        model = replay_edits(model, meta.edits)
    except (ConfigError, UnsupportedLayerError) as exc:
        raise CorruptFileError(
            f"{sidecar}: its structural edits do not fit the architecture ({exc})"
        ) from None
    try:
        load_effective_state_dict(model, tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CorruptFileError(
            f"{weights}: weights do not fit the architecture in {sidecar.name} ({first})"
        ) from None
    _attach_vectors(model, vectors, str(weights))
    return model.eval(), meta


VectorTensors = list[tuple[VectorLayer, tuple[torch.Tensor, ...]]]


def _take_vector_tensors(
    tensors: dict[str, torch.Tensor], layers: list[VectorLayer], where: Path
) -> VectorTensors:
    """Remove the tensors of each `vector` layer from `tensors` (the rest are the state dict);
    CorruptFileError when one is missing."""
    found = []
    for entry in layers:
        keys = vector_keys(entry.layer)
        missing = [key for key in keys if key not in tensors]
        if missing:
            raise CorruptFileError(f"{where}: vector layer {entry.layer!r} lacks {missing[0]}")
        found.append((entry, tuple(tensors.pop(key) for key in keys)))
    return found


def _attach_vectors(model: nn.Module, vectors: VectorTensors, where: str) -> None:
    """Re-attach each stored VectorCodebook to its layer's loaded weight. CorruptFileError for a
    layer without a plain weight, and for tensors that do not fit or decode to the weight."""
    modules = dict(model.named_modules())
    for entry, parts in vectors:
        module = modules.get(entry.layer)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or parametrize.is_parametrized(module, "weight"):
            raise CorruptFileError(
                f"{where}: vector layer {entry.layer!r} is not a plain layer weight of the model"
            )
        codebook = _vector_codebook(parts, weight, entry.axis, f"{where}: layer {entry.layer}")
        if codebook is not None:
            attach(module, codebook)


def _vector_codebook(parts, weight: torch.Tensor, axis: Axis, where: str):
    """The VectorCodebook of stored `parts` (checked against `weight` first), or None when the
    model holds the weight at another dtype than its codebooks (the values stand alone then, as
    after unpacking a .nsk). CorruptFileError unless it decodes to `weight` exactly."""
    books, indices, mask = parts
    _check_vector_shapes(books, indices, mask, tuple(weight.shape), axis, where)
    if books.dtype != weight.dtype:
        return None
    codebook = VectorCodebook(books, indices, mask.to(weight.dtype), axis)
    with torch.no_grad():
        if not torch.equal(codebook(weight), weight):
            raise CorruptFileError(f"{where}: its vector codebooks do not decode to its weight")
    return codebook


def _check_vector_shapes(books, indices, mask, shape: tuple[int, ...], axis: Axis, where: str):
    """CorruptFileError unless codebooks, indices and mask have the dtypes, ranks and sizes that a
    weight of `shape` quantized along `axis` implies, and every index is below k."""
    if (
        not shape
        or books.dim() != 4
        or not books.is_floating_point()
        or indices.dtype != torch.int64
        or mask.dtype != torch.bool
    ):
        raise CorruptFileError(f"{where}: vector codebook tensors of the wrong dtype or rank")
    stages, segments, k, segment = books.shape
    rows = shape[0]
    cols = math.prod(shape[1:])
    n, length = (rows, cols) if axis == "rows" else (cols, rows)
    if not (
        1 <= stages <= MAX_VECTOR_STAGES
        and k >= 1
        and 1 <= segment <= length
        and segments == -(-length // segment)
        and tuple(indices.shape) == (stages, segments, n)
        and tuple(mask.shape) == shape
    ):
        raise CorruptFileError(
            f"{where}: vector codebook shapes {tuple(books.shape)}, {tuple(indices.shape)} and "
            f"{tuple(mask.shape)} do not fit its weight {shape} along {axis}"
        )
    if indices.numel() and (indices.min() < 0 or indices.max() >= k):
        raise CorruptFileError(f"{where}: a vector code outside its {k} codewords")


def _build(meta: CheckpointMeta, sidecar: Path, allow_import: AllowImport) -> nn.Module:
    c, h, _ = meta.input_shape
    return build_model(
        meta.model,
        num_classes=meta.num_classes,
        in_channels=c,
        input_size=h,
        allow_import=allow_import,
        where=str(sidecar),
    )


def load_effective_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what `effective_state_dict` wrote, strictly. A tensor that the model parametrizes
    (a fixed-point weight, after a replayed edit) is assigned through its parametrization, so it
    lands in `original` (values already on their grid stay there); the rest load as usual.
    Raises RuntimeError on a missing, unexpected or misshapen tensor."""
    tensors = dict(tensors)
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in module.parametrizations:
            key = f"{name}.{tensor_name}" if name else tensor_name
            if key not in tensors:
                raise RuntimeError(f"Missing key in state dict: {key}")
            value, current = tensors.pop(key), getattr(module, tensor_name)
            if value.shape != current.shape:
                raise RuntimeError(
                    f"size mismatch for {key}: {tuple(value.shape)} stored, "
                    f"{tuple(current.shape)} in the model"
                )
            with torch.no_grad():
                setattr(module, tensor_name, value.to(current.dtype))
    # The parametrizations' own state (original, masks) is already in place: keep it as it is.
    kept = {k: v for k, v in model.state_dict().items() if "parametrizations" in k.split(".")}
    model.load_state_dict({**kept, **tensors}, strict=True)


def read_meta(sidecar: Path) -> CheckpointMeta:
    """Parse and validate a checkpoint's JSON sidecar."""
    packed = sidecar.with_suffix("")  # a checkpoint named model.nsk has the sidecar model.nsk.json
    if not sidecar.is_file() and packed.suffix == ".nsk" and packed.is_file():
        raise ConfigError(
            f"{packed} is a compressed .nsk file, not a checkpoint: decode it with "
            f"`netshrink unpack {packed} -o CKPT` first"
        )
    if not sidecar.is_file():
        raise CorruptFileError(
            f"{sidecar}: no such checkpoint sidecar (a checkpoint is a"
            " .safetensors file with a .json beside it)"
        )
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise LimitError(f"{sidecar}: over {MAX_SIDECAR_BYTES:,} bytes, too large for a sidecar")
    try:
        return CheckpointMeta.model_validate(json.loads(sidecar.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise CorruptFileError(
            f"{sidecar}: not a netshrink checkpoint sidecar ({_first_error(exc)})"
        ) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg']}"
