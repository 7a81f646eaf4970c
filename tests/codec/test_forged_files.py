"""Hostile files (issue 17): real small files with a header field, an edit or a payload made
hostile and every CRC recomputed (bench/forge.py) end in a netshrink Error or decode, within a
time and memory bound; the files that once crashed netshrink (tests/corpus/) stay fixed."""

import json
import random
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netshrink.codec.api import load_packed
from netshrink.codec.container import MAGIC, MAX_HEADER_BYTES, PREFIX
from netshrink.codec.summary import summarize
from netshrink.edits import MAX_EDITS_PER_MODULE
from netshrink.errors import Error, LimitError

BENCH = Path(__file__).resolve().parents[2] / "bench"
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
sys.path.insert(0, str(BENCH))

import forge  # noqa: E402

SECONDS = 3.0  # bench/fuzz.py holds each input to 1 s; a busy test machine gets some slack


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    return forge.seed_files(tmp_path_factory.mktemp("seeds"))


def _outcome(path: Path) -> str:
    """Decode and inspect `path`: "ok" or "error"; anything else fails the test. Memory is
    bounded in a child process (test_forgeries_stay_under_an_address_space_limit)."""
    result = []
    for decode in (load_packed, summarize):
        start = time.perf_counter()
        try:
            decode(path)
            result.append("ok")
        except Error:
            result.append("error")
        assert time.perf_counter() - start < SECONDS, f"{decode.__name__} took too long"
    return result[0]


def test_every_seed_file_decodes(seeds, tmp_path):
    for name, data in seeds.items():
        path = tmp_path / f"{name}.nsk"
        path.write_bytes(data)
        assert _outcome(path) == "ok", name


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(
        sorted(
            [
                "dense",
                "sparse",
                "codebook-bits",
                "factored",
                "filters",
                "folded",
                "fixed-huffman",
                "vector",
                "sign-huffman",
            ]
        )
    ),  # fmt: skip
    kind=st.sampled_from(forge.FORGERIES),
)
def test_forged_header_fields_end_in_an_error_or_decode(seeds, tmp_path, seed, name, kind):
    path = tmp_path / "forged.nsk"
    path.write_bytes(forge.forge(seeds[name], random.Random(seed), kind))
    _outcome(path)


def _with_header(data: bytes, change) -> bytes:
    header, payload = forge.split(data)
    change(header)
    return forge.assemble(header, payload)


CASES = {
    # the model is built from header fields before the tensors are checked against it
    "num_classes": lambda h: h.update(num_classes=10**6),
    "width": lambda h: h["model"]["args"].update(width=1000.0),
    "huge width": lambda h: h["model"]["args"].update(width=1e300),
    "input_shape": lambda h: h.update(input_shape=[1, 2**14, 8]),
    # an unbounded, repeated or inconsistent edit list
    "repeated edits": lambda h: h["edits"].extend([h["edits"][0]] * 100_000),
    "huge rank": lambda h: h["edits"].append(
        {"kind": "factor", "module": "classifier.0", "rank": 2**40}
    ),
    "keep list": lambda h: h["edits"].append(
        {"kind": "keep_channels", "module": "features.0", "dim": "out", "keep": list(range(2**19))}
    ),
}


EDIT_CASES = ("repeated edits", "huge rank", "keep list")


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_issues_forgeries_are_refused_quickly(seeds, tmp_path, case):
    seed = seeds["filters" if case in EDIT_CASES else "dense"]
    data = _with_header(seed, CASES[case])
    path = tmp_path / "forged.nsk"
    path.write_bytes(data)
    assert _outcome(path) == "error"


def test_a_fold_of_a_folded_layer_is_a_clear_error(seeds, tmp_path):
    def fold_twice(header):
        header["edits"].append(dict(header["edits"][0]))

    path = tmp_path / "forged.nsk"
    path.write_bytes(_with_header(seeds["folded"], fold_twice))
    with pytest.raises(Error, match="already factored or folded"):
        load_packed(path)
    edits = [{"kind": "factor", "module": "classifier.0", "rank": 1}] * (MAX_EDITS_PER_MODULE + 1)
    path.write_bytes(_with_header(seeds["dense"], lambda h: h.update(edits=edits)))
    with pytest.raises(Error, match="allowed for one module"):
        load_packed(path)


def test_a_codebook_of_zeros_decodes(seeds, tmp_path):
    header, payload = forge.split(seeds["codebook"])
    for record in header["tensors"]:
        section = record["sections"].get("centroids")
        if section:
            start, end = section["offset"], section["offset"] + section["length"]
            payload = payload[:start] + bytes(end - start) + payload[end:]
    path = tmp_path / "zeros.nsk"
    path.write_bytes(forge.assemble(header, payload))
    model, _ = load_packed(path)
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("centroids"))


def test_the_decode_cap_can_be_lowered_and_raised(seeds, tmp_path):
    path = tmp_path / "dense.nsk"
    path.write_bytes(seeds["dense"])
    with pytest.raises(LimitError, match="max_decoded_bytes"):
        load_packed(path, max_decoded_bytes=1 << 20)
    load_packed(path, max_decoded_bytes=None)


def test_forgeries_stay_under_an_address_space_limit(seeds, tmp_path):
    """A child with RLIMIT_AS at 1 GiB above its baseline decodes 150 forgeries (some worth
    gigabytes if believed); MemoryError or a killed child would fail here."""
    rng = random.Random(17)
    names = sorted(seeds)
    for i in range(150):
        data = forge.forge(seeds[rng.choice(names)], rng)
        (tmp_path / f"{i}.nsk").write_bytes(data)
    script = f"""
import sys; sys.path.insert(0, {str(BENCH)!r})
import forge
from pathlib import Path
from netshrink.codec.api import load_packed
from netshrink.codec.summary import summarize
from netshrink.errors import Error
forge.limit_memory(1 << 30)
for path in sorted(Path({str(tmp_path)!r}).glob("*.nsk")):
    for decode in (load_packed, summarize):
        try:
            decode(path)
        except Error:
            pass
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.nsk")), ids=lambda p: p.name)
def test_corpus_files_end_in_an_error_or_decode(path):
    """Every file the long fuzz (bench/fuzz.py) or the issue found crashing netshrink."""
    _outcome(path)


def _record(values, coders):
    import torch

    from netshrink.codec.encodings import PackConfig, encode_tensor
    from netshrink.codec.header import TensorRecord

    dtype, tag, encoded = encode_tensor(torch.from_numpy(values), PackConfig(coders=coders))
    sections = {role: section for role, (section, _) in encoded.sections.items()}
    record = TensorRecord(name="t", shape=values.shape, dtype=dtype, encoding=tag,
                          params=encoded.params, sections=sections)  # fmt: skip
    return record, {role: data for role, (_, data) in encoded.sections.items()}


@pytest.mark.parametrize("coders", [(), ("huffman",), ("ans",)])
def test_decoders_stay_within_their_counted_working_bytes(coders):
    """encodings.working_bytes, which the decode budget counts, bounds what decoding allocates
    besides its output (numpy's arrays, as tracemalloc sees them)."""
    import numpy as np

    from netshrink.codec.encodings import decode_tensor, working_bytes

    rng = np.random.default_rng(0)
    n = 1 << 18
    dense = rng.standard_normal(n).astype(np.float32)
    shared = rng.choice(np.float32([0.3, 0.7, 1.1]), n)
    grid = rng.integers(-30000, 30000, n).astype(np.float32) + 0.5
    for values in (dense, shared, grid, np.where(rng.random(n) < 0.5, dense, 0), shared * 0):
        record, data = _record(values, coders)
        tracemalloc.start()
        out = decode_tensor(record, data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak - out.numel() * out.element_size() <= working_bytes(record), record.encoding


def test_a_header_that_inflates_past_its_cap_is_refused_unparsed(seeds, tmp_path):
    """A zlib bomb in the header (the issue's 64 MiB of JSON reached 1.8 GB once parsed): it is
    inflated only up to MAX_HEADER_BYTES and never handed to the JSON parser."""
    header, payload = forge.split(seeds["dense"])
    text = json.dumps(header).encode() + b" " * (MAX_HEADER_BYTES + 1)
    packed = zlib.compress(text, 9)
    body = PREFIX.pack(MAGIC, 1, 0, len(packed), zlib.crc32(packed)) + packed + payload
    path = tmp_path / "bomb.nsk"
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    tracemalloc.start()
    try:
        with pytest.raises(Error, match=str(MAX_HEADER_BYTES)):
            load_packed(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_HEADER_BYTES
