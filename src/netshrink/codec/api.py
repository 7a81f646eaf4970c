"""`pack` and `unpack`: a model to one small .nsk file and back (Han et al. 2016, Deep
Compression's storage stage; Kim et al.'s "synapse code").

What is stored is what the forward pass computes (`effective_state_dict`): a pruned weight is an
exact zero, a shared weight its centroid. The architecture is a ModelSpec (a zoo name, or an
import path that unpack imports only when allowed), replayed with the model's structural edits.
"""

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ..checkpoint import CheckpointMeta, effective_state_dict, load_effective_state_dict
from ..config import takes_mappings
from ..edits import structural_edits
from ..errors import ConfigError, CorruptFileError, UnsupportedLayerError
from ..files import atomic_write
from ..layers import unwrap
from ..mask import restore_masks
from ..models import ModelSpec, build_model
from ..models.registry import AllowImport
from ..quant.quantize import weight_quant
from ..replay import replay_edits
from ..share.codebooks import SignCodebook, VectorCodebook, attach, restore_codebook
from ..untrusted import (
    MAX_DECODED_BYTES,
    build_skeleton,
    check_budget,
    check_skeleton,
    decode_budget,
    model_bytes,
)
from .container import Container, container_bytes, read_container
from .encodings import PackConfig, decode_tensor, encode_tensor
from .header import DTYPES, Header, TensorRecord
from .shared import VectorParts, sign_parts, vector_parts


@takes_mappings
def pack(
    model: nn.Module,
    path: str | Path,
    config: PackConfig | None = None,
    *,
    meta: CheckpointMeta | None = None,
    spec: ModelSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    measurement: Any = None,
) -> Path:
    """Write `model` (any nn.Module, parametrized or not) to `path` as a .nsk file.

    `meta` (a checkpoint's sidecar) or `spec` / `input_shape` / `num_classes` name the
    architecture, so that `unpack` can rebuild it; without them the file holds the values and
    structural edits only and `unpack` needs `model=`. `measurement` (a Measurement or a dict)
    is stored in the header. The same model and config give the same bytes.

    Example:
        >>> pack(prune_magnitude(lenet300_100(), config), "model.nsk",
        ...      spec=ModelSpec(name="lenet300_100"), input_shape=(1, 28, 28), num_classes=10)
    """
    path = Path(path)
    about = {"spec": spec, "input_shape": input_shape, "num_classes": num_classes}
    body = packed_bytes(
        model, config or PackConfig(), meta=meta, measurement=measurement, where=str(path), **about
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(body))
    return path


@takes_mappings
def packed_bytes(
    model: nn.Module,
    config: PackConfig = PackConfig(),  # frozen: one shared default is safe
    *,
    meta: CheckpointMeta | None = None,
    spec: ModelSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    measurement: Any = None,
    where: str = "<memory>",
) -> bytes:
    """The bytes `pack` writes for the same arguments, without writing them: `len()` of them is
    the exact size of the file (netshrink.codec.summary.summarize_model says what they hold).

    Example:
        >>> len(packed_bytes(model)) == pack(model, "model.nsk").stat().st_size
        True
    """
    root = unwrap(model)
    records, payload = _encode_state(root, config)
    given = {"model": spec, "input_shape": _shape(input_shape), "num_classes": num_classes}
    header = _header(root, records, meta, given, measurement)
    return container_bytes(header, payload, where)


def _header(root, records, meta, given: dict, measurement) -> Header:
    from_meta = {}
    if meta is not None:
        from_meta = {
            "model": meta.model,
            "input_shape": tuple(meta.input_shape),
            "num_classes": meta.num_classes,
            "data": meta.data.model_dump(mode="json") if meta.data else None,
            "fit": meta.fit.model_dump(mode="json") if meta.fit else None,
            "metrics": _without_timing(meta.metrics),
        }
    fields = {**from_meta, **{k: v for k, v in given.items() if v is not None}}
    try:
        return Header(
            **fields,
            edits=structural_edits(root),
            measurement=_without_timing(_measurement(measurement)),
            tensors=records,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"cannot pack: {where}: {err['msg']}") from None


# Wall-clock readings (a training's seconds, a latency) differ between two runs of one recipe and
# seed: they stay out of the file, so that the same model packs to the same bytes. Checkpoint
# sidecars, state.json and report.json keep them.
_TIMING_WORDS = {"seconds", "latency", "time", "timestamp", "date", "duration"}


def _without_timing(values: dict | None) -> dict | None:
    """`values` less every key with a timing word in it (`train_seconds`, `latency_ms_b1`)."""
    if values is None:
        return None
    return {k: v for k, v in values.items() if not _TIMING_WORDS & set(k.lower().split("_"))}


def _encode_state(model: nn.Module, config: PackConfig) -> tuple[list[TensorRecord], list[bytes]]:
    records, payload, offset = [], [], 0
    vector = _vector_parts(model)
    for name, tensor in _ordered_state(model).items():
        try:
            dtype, tag, encoded = encode_tensor(tensor, config, vector.get(name))
        except ValueError as exc:
            raise ConfigError(f"cannot pack {name}: {exc}") from None
        sections = {}
        for role, (section, data) in encoded.sections.items():
            update = {"offset": offset, "length": len(data), "crc32": zlib.crc32(data)}
            sections[role] = section.model_copy(update=update)
            payload.append(data)
            offset += len(data)
        records.append(
            TensorRecord(
                name=name,
                shape=tuple(tensor.shape),
                dtype=dtype,
                encoding=tag,
                params=encoded.params,
                sections=sections,
            )
        )
    return records, payload


def _vector_parts(model: nn.Module) -> dict[str, VectorParts]:
    """The codebooks of every tensor a VectorCodebook computes (product / residual quantization),
    by state-dict name: the `vector` encoding stores them, since the values alone do not say."""
    found = {}
    for module_name, module in model.named_modules():
        for tensor, chain in getattr(module, "parametrizations", {}).items():
            for p in chain:
                if isinstance(p, VectorCodebook):
                    key = f"{module_name}.{tensor}" if module_name else tensor
                    found[key] = VectorParts(
                        p.codebooks.detach().cpu().numpy(),
                        p.indices.cpu().numpy(),
                        p.mask.detach().cpu().numpy(),
                        p.axis,
                    )
    return found


def _ordered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """effective_state_dict in module order (a parametrized tensor where its module is)."""
    state = effective_state_dict(model)
    order = []
    for key in model.state_dict():
        parts = key.split(".")
        if "parametrizations" in parts:  # a.parametrizations.weight.original -> a.weight
            i = parts.index("parametrizations")
            key = ".".join(parts[:i] + [parts[i + 1]])
        if key in state and key not in order:
            order.append(key)
    return {k: state[k] for k in order + [k for k in state if k not in order]}


def _shape(shape) -> tuple[int, ...] | None:
    return None if shape is None else tuple(int(n) for n in shape)


def _measurement(measurement: Any) -> dict | None:
    if measurement is None or isinstance(measurement, dict):
        return measurement
    return measurement.to_json()


def unpack(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    allow_import: AllowImport = (),
    bake: bool = False,
    max_decoded_bytes: int | None = MAX_DECODED_BYTES,
) -> nn.Module:
    """Decode a .nsk file to a model in eval mode (Han et al. 2016; Kim et al.).

    The architecture is rebuilt from the file's ModelSpec, or `model` (a freshly built one) is
    used instead; the structural edits are replayed, then the values loaded strictly. A file
    that names an import path (`package.module:factory`) is built only when `allow_import`
    lists that exact name: importing runs its code (netshrink.models.registry's policy). The
    model comes back parametrized as it was packed: a sparse weight gets its pruning mask, a
    codebook-coded one its ScalarCodebook
    (so retraining keeps zeros and shared values); `bake=True` gives plain weights instead.
    Any damage to the file raises CorruptFileError. Nothing is allocated from a size the file
    states before it is checked: the architecture is first built on the meta device and must
    hold exactly the stored tensors, and the tensors, the decoders' working arrays and the model
    must fit `64 MiB + 4096 * file size` bytes and `max_decoded_bytes` (default 2 GiB; None
    lifts it for a file you trust), else LimitError (netshrink.untrusted).
    """
    return load_packed(
        path, model, allow_import=allow_import, bake=bake, max_decoded_bytes=max_decoded_bytes
    )[0]


def load_packed(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    allow_import: AllowImport = (),
    bake: bool = False,
    max_decoded_bytes: int | None = MAX_DECODED_BYTES,
) -> tuple[nn.Module, Header]:
    """`unpack`, also returning the file's header (architecture, edits, metrics)."""
    container = read_container(path, max_decoded_bytes)
    header = container.header
    given = model is not None
    if not given:  # the file's own architecture: sized by the file, so checked before it is built
        _check_architecture(container, path, allow_import, max_decoded_bytes)
    tensors = decode_all(container, str(path))  # a damaged file fails before any model is built
    model = unwrap(model) if given else _build(header, path, allow_import)
    model = _replay(model, header, path, given)
    try:
        load_effective_state_dict(model, tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        error = ConfigError if given else CorruptFileError
        raise error(f"{path}: the stored tensors do not fit the model ({first})") from None
    if not bake:
        _reparametrize(model, container)
    return model.eval(), header


def load_packed_checkpoint(
    path: str | Path,
    *,
    allow_import: AllowImport = (),
    max_decoded_bytes: int | None = MAX_DECODED_BYTES,
) -> tuple[nn.Module, CheckpointMeta]:
    """A .nsk file as a checkpoint would give it: the decoded model and the sidecar its header
    holds (architecture, input shape, data and fit settings, metrics), so that every command
    that takes a checkpoint takes a .nsk file too."""
    model, header = load_packed(
        path, allow_import=allow_import, max_decoded_bytes=max_decoded_bytes
    )
    if header.model is None or header.input_shape is None or header.num_classes is None:
        raise ConfigError(
            f"{path} does not name its architecture and input shape, so it cannot stand for a "
            "checkpoint; decode it in Python with netshrink.unpack(path, model=...)"
        )
    try:
        meta = CheckpointMeta(
            model=header.model,
            input_shape=header.input_shape,
            num_classes=header.num_classes,
            data=header.data,
            fit=header.fit,
            metrics=header.metrics,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CorruptFileError(
            f"{path}: its data or fit settings are invalid ({first['loc']}: {first['msg']})"
        ) from None
    return model, meta


def _reparametrize(model: nn.Module, container: Container) -> None:
    """Masks on sparse layer weights and codebooks on codebook-coded ones (a ScalarCodebook, or
    the SignCodebook / VectorCodebook of a `sign` / `vector` record), as they were packed."""
    for record, data in zip(container.header.tensors, container.sections):
        owner, _, tensor = record.name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if tensor != "weight" or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        quantized = weight_quant(module) is not None  # its grid is its own codebook
        if "centroids" in record.sections and not quantized:
            restore_codebook(module, tensor)
        elif (
            record.encoding in ("sign", "vector") and not quantized and _same_dtype(record, module)
        ):
            attach(module, _shared(record, {k: bytes(v) for k, v in data.items()}), tensor)
        elif record.encoding == "sparse":
            restore_masks(model, [(owner, module)])


def _same_dtype(record: TensorRecord, module: nn.Module) -> bool:
    """Whether the model holds the weight at the dtype the file decoded it to: only then does a
    rebuilt codebook compute the loaded values (else the values stand alone)."""
    return DTYPES[record.dtype][0] == module.weight.dtype


def _shared(record: TensorRecord, data: dict[str, bytes]) -> nn.Module:
    """The SignCodebook or VectorCodebook whose forward gives a `sign` / `vector` record's
    values (decoded once already, so its sections are known to be sound)."""
    if record.encoding == "sign":
        scales, signs = (torch.from_numpy(a) for a in sign_parts(record, data))
        signs = signs.reshape(record.shape)
        return SignCodebook(scales, signs, (signs != 0).to(signs.dtype), ternary=False)
    books, indices, mask, axis = vector_parts(record, data)
    books = torch.from_numpy(np.ascontiguousarray(books))
    mask = torch.from_numpy(mask).reshape(record.shape)
    return VectorCodebook(books, torch.from_numpy(indices), mask, axis)


def decode_all(container: Container, where: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checked container, by name."""
    tensors = {}
    for record, data in zip(container.header.tensors, container.sections):
        try:
            tensors[record.name] = decode_tensor(record, {k: bytes(v) for k, v in data.items()})
        except (ValueError, IndexError, OverflowError) as exc:  # defence in depth
            raise CorruptFileError(f"{where}: {record.name} does not decode ({exc})") from None
    return tensors


def _check_architecture(
    container: Container, path, allow_import: AllowImport, max_decoded_bytes: int | None
) -> None:
    """Build the file's model and replay its edits on the meta device (no memory), then check
    that its state is exactly the stored tensors and that it fits the decode budget."""
    header, where = container.header, str(path)
    skeleton = build_skeleton(
        lambda: _build(header, path, allow_import),
        header.edits,
        where,
        "its model spec",
        replay=replay_edits,
    )
    check_skeleton(skeleton, {r.name: r.shape for r in header.tensors}, where)
    needed = container.decoded_bytes + model_bytes(skeleton)
    budget = decode_budget(container.size, max_decoded_bytes)
    check_budget(needed, budget, where, "the model (model, num_classes, input_shape) and tensors")


def _build(header: Header, path, allow_import: AllowImport) -> nn.Module:
    spec = header.model
    if spec is None:
        raise ConfigError(
            f"{path} stores no architecture (it was packed from a module without a ModelSpec): "
            "build the model yourself and pass it, unpack(path, model=...)"
        )
    shape = header.input_shape
    return build_model(
        spec,
        num_classes=header.num_classes,
        in_channels=shape[0] if shape else None,
        input_size=shape[1] if shape else None,
        allow_import=allow_import,
        where=str(path),
    )


def _replay(model: nn.Module, header: Header, path, given: bool) -> nn.Module:
    existing = structural_edits(model)
    if given and existing:
        if existing == header.edits:
            return model
        raise ConfigError(
            f"the model passed to unpack already has {len(existing)} structural edits that "
            f"differ from the {len(header.edits)} in {path}; pass a freshly built model"
        )
    try:
        return replay_edits(model, header.edits)
    except (ConfigError, UnsupportedLayerError) as exc:
        error = ConfigError if given else CorruptFileError
        raise error(f"{path}: its structural edits do not fit the model ({exc})") from None
