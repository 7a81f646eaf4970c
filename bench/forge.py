"""Forged .nsk files: real small files with one header field, edit or payload byte made hostile,
every CRC then recomputed so that only the content is wrong (issue 17, "Hostile files").

Shared by tests/codec/test_forged_files.py (hypothesis picks the forgery) and bench/fuzz.py
(a million of them under memory and time limits). `seed_files` packs a tiny vgg_small in each
form the compression methods produce; `forge(data, rng)` returns one forgery of a file.
"""

import copy
import json
import random
import resource
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from netshrink.codec import PackConfig, pack
from netshrink.codec.container import MAGIC, PREFIX, TRAILER
from netshrink.codec.header import TAG_VERSION
from netshrink.models import ModelSpec, build_model

SPEC = ModelSpec(name="vgg_small", args={"width": 0.125})
INPUT_SHAPE, CLASSES = (1, 8, 8), 3
# Values that break parsers and allocators: zero, negatives, sizes around 2**31 / 2**32 / 2**63,
# floats, wrong types.
EXTREMES = [
    0, 1, -1, 2, 7, 255, 256, 4097, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**40, 2**63, 10**30,
    -(2**63), 0.5, 1e30, -1e-30, None, True, "x", "", [], {}, [0], [2**31, 2**31],
]  # fmt: skip


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        SPEC, num_classes=CLASSES, in_channels=INPUT_SHAPE[0], input_size=INPUT_SHAPE[1]
    )
    return model.eval()


def _forms() -> dict[str, Callable[[], torch.nn.Module]]:
    from netshrink.fold import fold_batchnorm
    from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude
    from netshrink.prune.filters import PruneFiltersConfig, prune_filters
    from netshrink.quant.quantize import quantize
    from netshrink.share.product import ShareRqConfig, share_rq
    from netshrink.share.scalar import (
        ShareBinaryConfig,
        ShareKmeansConfig,
        share_binary,
        share_kmeans,
    )
    from netshrink.share.svd import FactorSvdConfig, factor_svd

    def pruned():
        return prune_magnitude(_model(), PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))

    return {
        "dense": _model,
        "sparse": pruned,
        "codebook": lambda: share_kmeans(pruned(), ShareKmeansConfig(bits=2), progress=False),
        "factored": lambda: factor_svd(_model(), FactorSvdConfig(rank=2), progress=False),
        "filters": lambda: prune_filters(_model(), PruneFiltersConfig(amount=0.5), INPUT_SHAPE),
        "folded": lambda: fold_batchnorm(_model()),
        "fixed": lambda: quantize(_model(), torch.randn(16, *INPUT_SHAPE)),
        "vector": lambda: share_rq(
            pruned(), ShareRqConfig(stages=2, k=4, segment=3), progress=False
        ),
        "sign": lambda: share_binary(pruned(), ShareBinaryConfig(ternary=True), progress=False),
    }


def seed_files(directory: Path) -> dict[str, bytes]:
    """The real files forgeries start from, by name: each form of the model, packed with every
    coder allowed and with Huffman and bit-packing alone (so every section kind appears)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    configs = {"": PackConfig(), "-huffman": PackConfig(coders=("huffman",))}
    configs["-bits"] = PackConfig(coders=())
    for form, make in _forms().items():
        model = make()
        for suffix, config in configs.items():
            path = directory / f"{form}{suffix}.nsk"
            pack(model, path, config, spec=SPEC, input_shape=INPUT_SHAPE, num_classes=CLASSES)
            files[form + suffix] = path.read_bytes()
    return files


def split(data: bytes) -> tuple[dict, bytes]:
    """(header as JSON, payload) of a well-formed file."""
    length = struct.unpack_from("<I", data, 12)[0]
    start = PREFIX.size + length
    return json.loads(zlib.decompress(data[PREFIX.size : start])), bytes(data[start:-TRAILER])


def assemble(header: dict, payload: bytes) -> bytes:
    """A file around `header` and `payload` with every section CRC, the header's CRC and the
    file's CRC recomputed (a section's CRC from the bytes its offset and length name)."""
    records = header.get("tensors") if isinstance(header, dict) else None
    for record in records if isinstance(records, list) else []:
        sections = record.get("sections") if isinstance(record, dict) else None
        for s in sections.values() if isinstance(sections, dict) else []:
            if isinstance(s, dict) and _ints(s.get("offset"), s.get("length")):
                s["crc32"] = zlib.crc32(payload[s["offset"] : s["offset"] + s["length"]])
    packed = zlib.compress(json.dumps(header).encode(), 1)  # the size is not what is tested
    version = max([TAG_VERSION.get(r.get("encoding"), 1) for r in _dicts(records)], default=1)
    out = PREFIX.pack(MAGIC, version, 0, len(packed), zlib.crc32(packed)) + packed + payload
    return out + struct.pack("<I", zlib.crc32(out))


def _dicts(records) -> list[dict]:
    """The records that are objects with a hashable encoding (the format version they need)."""
    items = records if isinstance(records, list) else []
    return [r for r in items if isinstance(r, dict) and isinstance(r.get("encoding"), str)]


def _ints(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 for v in values)


# --- header forgeries: each takes (header, payload, rng) and returns the new pair ---


def set_leaf(header, payload, rng):
    """Any one value anywhere in the header set to an extreme."""
    leaves = []

    def walk(node):
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            leaves.append((node, key))
            if isinstance(value, (dict, list)):
                walk(value)

    walk(header)
    node, key = rng.choice(leaves)
    node[key] = _extreme(rng, node[key])
    return header, payload


def _extreme(rng, old):
    options = list(EXTREMES)
    if isinstance(old, int) and not isinstance(old, bool):
        options += [old + 1, old - 1, old * 2, old * 1000, old << 20]
    return rng.choice(options)


def scale_shape(header, payload, rng):
    """One tensor's shape, one dimension multiplied or the whole shape replaced."""
    record = rng.choice(header["tensors"])
    shape = record["shape"]
    if shape and rng.random() < 0.7:
        i = rng.randrange(len(shape))
        shape[i] = shape[i] * rng.choice([2, 1000, 2**20, 2**31]) + rng.choice([0, 1])
    else:
        record["shape"] = rng.choice([[], [0], [2**31], [2**16, 2**16], [1] * 17, [3, 2**30]])
    return header, payload


def section_field(header, payload, rng):
    """A count, width, alphabet, block or length of one section set to an extreme."""
    record = rng.choice(header["tensors"])
    section = rng.choice(list(record["sections"].values()))
    field = rng.choice([k for k in section if k not in ("kind", "crc32")] or ["count"])
    section[field] = rng.choice([0, 1, 2, 8, 16, 31, 32, 33, 4096, 65536, 2**20, 2**31, 2**40])
    if rng.random() < 0.5 and "count" in section:  # keep the counts consistent with each other
        for other in record["sections"].values():
            other["count"] = section.get("count", 0)
    return header, payload


def encoding_swap(header, payload, rng):
    """A tensor's encoding tag, dtype, section kind or params changed."""
    record = rng.choice(header["tensors"])
    what = rng.randrange(4)
    if what == 0:
        record["encoding"] = rng.choice(["dense", "sparse", "codebook", "fixed"])
    elif what == 1:
        record["dtype"] = rng.choice(["float16", "float64", "bfloat16", "int8", "int64", "bool"])
    elif what == 2:
        section = rng.choice(list(record["sections"].values()))
        section["kind"] = rng.choice(["bytes", "bits", "huffman", "ans"])
    else:
        key = rng.choice(["frac", "offset", "index_bits", "k"])
        record["params"][key] = rng.choice([-65, -64, 0, 1, 16, 17, 64, 65, 2**31, -(2**32)])
    return header, payload


def model_field(header, payload, rng):
    """The architecture: num_classes, input_shape or a factory argument made extreme."""
    what = rng.randrange(4)
    if what == 0:
        header["num_classes"] = rng.choice([0, 1, 2**20, 2**31, 10**12, 10**30, -3])
    elif what == 1:
        header["input_shape"] = rng.choice(
            [[1, 8, 2**14], [2**14, 8, 8], [1, 2**31, 8], [0, 8, 8], [1, 1, 1], [3, 32, 32]]
        )
    elif what == 2:
        key = rng.choice(["width", "batch_norm", "num_classes", "input_size", "depth"])
        header["model"]["args"][key] = rng.choice(
            [1e6, 1e30, 1e308, -1, 0, 0.001, 100, 2**40, "x", None, True, [1, 2], {"a": 1}]
        )
    else:
        header["model"]["name"] = rng.choice(
            ["lenet5", "resnet20", "mobilenet_v2", "lenet300_100", "nope", "os:system"]
        )
    return header, payload


def edit_forgery(header, payload, rng):
    """The edit list: an edit repeated, a huge keep list or rank, a fold of a folded layer,
    edits on the wrong layer kinds or on modules an earlier edit replaced."""
    edits = header.setdefault("edits", [])
    layers = [r["name"].rsplit(".", 1)[0] for r in header["tensors"] if "." in r["name"]]
    name = rng.choice(layers or ["features.0"])
    what = rng.randrange(7)
    if what == 0 and edits:
        edits.extend([copy.deepcopy(rng.choice(edits))] * rng.choice([2, 17, 10_000, 100_000]))
    elif what == 1:
        keep = list(range(rng.choice([1, 2**10, 2**16, 2**20 + 1])))
        edits.append({"kind": "keep_channels", "module": name, "dim": "out", "keep": keep})
    elif what == 2:
        edits.append({"kind": "factor", "module": name, "rank": rng.choice([2**20, 2**40, 0])})
    elif what == 3:
        bn = rng.choice(layers or ["features.1"])
        edits += [{"kind": "fold_batchnorm", "conv": name, "bn": bn}] * rng.choice([1, 2])
    elif what == 4:
        edits += [{"kind": "factor", "module": name, "rank": 1}] * 2
    elif what == 5:
        edits.append({"kind": "keep_channels", "module": name, "dim": rng.choice(
            ["in", "out", "depthwise", "batchnorm"]), "keep": [0, 1]})  # fmt: skip
    elif edits:
        edits.append(copy.deepcopy(edits[0]))
        rng.shuffle(edits)
    return header, payload


def payload_values(header, payload, rng):
    """Section bytes rewritten: a codebook's centroids all zero, random bytes, all ones."""
    records = [r for r in header["tensors"] if r["sections"]]
    record = rng.choice(records)
    role, section = rng.choice(list(record["sections"].items()))
    start, length = section["offset"], section["length"]
    fill = rng.choice([b"\x00", b"\xff", None])
    new = rng.randbytes(length) if fill is None else fill * length
    if role == "centroids" and rng.random() < 0.5:
        new = b"\x00" * length
    return header, payload[:start] + new + payload[start + length :]


FORGERIES = [
    set_leaf, scale_shape, section_field, encoding_swap, model_field, edit_forgery,
    payload_values,
]  # fmt: skip


def forge(data: bytes, rng: random.Random, kind: Callable | None = None) -> bytes:
    """One forgery of the well-formed file `data` (of `kind`, else a random one), with every
    checksum valid."""
    header, payload = split(data)
    kind = kind or rng.choice(FORGERIES)
    header, payload = kind(header, payload, rng)
    return assemble(header, payload)


def mutate_bytes(data: bytes, rng: random.Random, other: bytes = b"") -> bytes:
    """A byte-level mutation: bits flipped, bytes inserted or deleted, a splice with `other`;
    half the time the checksums are then recomputed, so the parser meets the damage."""
    out = bytearray(data)
    what = rng.randrange(4)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(len(out) + 1)
        if what == 0 and i < len(out):
            out[i] ^= 1 << rng.randrange(8)
        elif what == 1:
            out[i:i] = rng.randbytes(rng.choice([1, 4, 8]))
        elif what == 2:
            del out[i : i + rng.choice([1, 4, 64])]
    if what == 3 and other:
        j = rng.randrange(len(other))
        out = out[: rng.randrange(len(out))] + bytearray(other[j:])
    if rng.random() < 0.5:
        return _recrc(bytes(out))
    return bytes(out)


def _recrc(data: bytes) -> bytes:
    """`data` with its header CRC and file CRC made valid again, where the prefix allows."""
    if len(data) < PREFIX.size + TRAILER or data[:8] != MAGIC:
        return data
    length = struct.unpack_from("<I", data, 12)[0]
    head = data[PREFIX.size : PREFIX.size + length]
    out = data[:16] + struct.pack("<I", zlib.crc32(head)) + data[20:-TRAILER]
    return out + struct.pack("<I", zlib.crc32(out))


def limit_memory(extra: int) -> None:
    """Cap this process's address space at what it maps now plus `extra` bytes (torch reserves
    much virtual memory at import, so the cap is relative)."""
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, mapped + extra))
