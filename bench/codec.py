"""Codec benchmark: the .nsk coders against the order-0 entropy of real index streams, the file
against fp32 safetensors / zip / xz, coder throughput, and Deep Compression's LeNet figures.

    python bench/codec.py [--cache DIR] [--symbols 10000000] [--no-deep-compression]

Index streams come from the cached Fashion-MNIST baselines (bench/baselines.py) pruned to Deep
Compression's per-layer densities (Han et al. 2016, Tables 1-2); the throughput stream has 10M
symbols drawn from LeNet-300-100's fc1 index stream. The Deep Compression rows (prune -> retrain
-> k-means at the paper's bits -> retrain -> pack) run when netshrink.share is installed; their
top-1 is measured on the model decoded from the file. Writes bench/results/codec.json and the
codec section of docs/benchmarks.md.
"""

import argparse
import importlib.util
import io
import lzma
import sys
import time
import zipfile
import zlib
from pathlib import Path
from tempfile import TemporaryDirectory

import constriction
import numpy as np
from safetensors.torch import save

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402
from netshrink.baseline import BASELINES, cached_baseline  # noqa: E402
from netshrink.checkpoint import effective_state_dict  # noqa: E402
from netshrink.codec import PackConfig, ans, huffman, pack, relative, unpack  # noqa: E402
from netshrink.codec.streams import entropy_bits  # noqa: E402
from netshrink.data import load_data  # noqa: E402
from netshrink.layers import select_layers  # noqa: E402
from netshrink.prune import LayerSparsity, PruneMagnitudeConfig, prune_magnitude  # noqa: E402
from netshrink.stage import Stage, relative_fit  # noqa: E402
from netshrink.train import FitConfig, evaluate, fit  # noqa: E402
from pipeline import pruned_baseline  # noqa: E402

# Deep Compression's densities after pruning (Han et al. 2016, Tables 1-2) and its shared bits.
PAPER_KEEP = {
    "lenet300_100": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
    "lenet5_caffe": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
}
# conv 8 / fc 5 bits, as the weight-sharing issue and bench/share.py run Deep Compression
SHARE_BITS = {"lenet300_100": {"fc_bits": 5}, "lenet5_caffe": {"conv_bits": 8, "fc_bits": 5}}
PAPER_RATIO = {"lenet300_100": 40, "lenet5_caffe": 39}
# Centroid fine-tuning as bench/share.py runs it, at the stages' default rate (baseline / 10).
CENTROID_FINETUNE = FitConfig(epochs=2)
SMALL_STREAM = 10_000  # below this, a coder's tables weigh more than the targets allow
LIMITS = {"ans": 1.01, "huffman": 1.05}
COLUMNS = ["case", "measure", "netshrink", "reference", "ratio", "target", "meets target"]


def _baseline(name: str, cache: Path | None):
    spec, data_config, fit_config = BASELINES[name]
    data = load_data(data_config)
    model, meta, _ = cached_baseline(spec, data, fit_config, cache_dir=cache, progress=False)
    return model, meta, data, fit_config


def _prune(model, name: str):
    sparsity = {layer: 1 - keep for layer, keep in PAPER_KEEP[name].items()}
    config = PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.9), per_layer=sparsity)
    return prune_magnitude(model, config)


def _row(case, measure, ours, reference, target=None, meets=None, ratio=None) -> dict:
    ratio = ours / reference if ratio is None and reference else ratio
    rounded = [round(v, 4) if isinstance(v, float) else v for v in (ours, reference, ratio)]
    return dict(zip(COLUMNS, [case, measure, *rounded, target, meets]))


def stream_rows(name: str, model) -> tuple[list[dict], np.ndarray]:
    """Huffman and ANS bits per symbol (tables included) against H0 for every weight's
    relative-index stream, and their totals; also returns the first layer's stream."""
    rows, total, first = [], {"huffman": 0, "ans": 0, "h0": 0.0}, None
    for layer, module in select_layers(model):
        bits = relative.paper_bits(tuple(module.weight.shape))
        positions = np.flatnonzero(module.weight.detach().reshape(-1).numpy())
        stream = relative.encode_positions(positions, bits)
        first = stream if first is None else first
        coded, h0, big = _coded_bits(stream), entropy_bits(stream), stream.size >= SMALL_STREAM
        total["h0"] += h0
        for coder, limit in LIMITS.items():
            total[coder] += coded[coder]
            case = f"{name} {layer} index (b={bits}, {stream.size:,} symbols)"
            measure = f"{coder} bits/symbol incl. tables; reference H0"
            target, meets = (f"<= {limit}x", coded[coder] <= limit * h0) if big else ("-", None)
            rows.append(_row(case, measure, coded[coder] / stream.size, h0 / stream.size,
                             target, meets))  # fmt: skip
    for coder, limit in LIMITS.items():
        ok = total[coder] <= limit * total["h0"]
        measure = f"{coder} bits, all streams; reference H0"
        rows.append(_row(f"{name} all index streams", measure, float(total[coder]), total["h0"],
                         f"<= {limit}x", ok))  # fmt: skip
    return rows, first


def _coded_bits(stream: np.ndarray) -> dict[str, int]:
    alphabet = max(int(stream.max()) + 1, 2)
    plan = ans.plan(np.bincount(stream, minlength=alphabet))
    return {
        "huffman": 8 * huffman.plan(stream, alphabet).nbytes,
        "ans": 8 * len(ans.encode(stream, plan)),
    }


def file_rows(case: str, model, meta, tmp: Path) -> list[dict]:
    """The .nsk file against the same weights as fp32 safetensors, zip and xz of it."""
    raw = save({k: v.contiguous().clone() for k, v in effective_state_dict(model).items()})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("model.safetensors", raw)
    peers = {
        "fp32 safetensors": len(raw),
        "zip -9 of it": len(buffer.getvalue()),
        "xz -9 of it": len(lzma.compress(raw, preset=9)),
    }
    size = pack(model, tmp / "m.nsk", meta=meta).stat().st_size
    measure = ".nsk bytes; reference {} (ratio = reference / .nsk)"
    return [
        _row(case, measure.format(peer), size, bytes_, ratio=bytes_ / size)
        for peer, bytes_ in peers.items()
    ]


def speed_rows(source: np.ndarray, n: int) -> list[dict]:
    """Encode / decode M symbols/s and bits/symbol on `n` symbols drawn from `source`'s
    distribution: ours against constriction's ANS, zlib, and constriction's Huffman (timed on
    200k symbols: one Python call a symbol)."""
    counts = np.bincount(source)
    p = counts / counts.sum()
    stream = np.random.default_rng(0).choice(p.size, size=n, p=p)
    ours = {"huffman": _huffman_codec(p.size, n), "ans": _ans_codec(p.size, n)}
    zlib_codec = (
        lambda s: zlib.compress(s.astype(np.uint8).tobytes(), 6),
        lambda data: np.frombuffer(zlib.decompress(data), dtype=np.uint8),
    )
    peers = {"constriction ANS": _constriction_codec(p, n), "zlib -6": zlib_codec}
    speed = {name: _speed(stream, *codec) for name, codec in {**ours, **peers}.items()}
    speed["constriction Huffman"] = _speed(stream[:200_000], *_constriction_huffman(p), 1)
    rows = []
    for coder in ours:
        case = f"{coder} on {n / 1e6:g}M symbols (H0 {entropy_bits(stream) / n:.3f} bits)"
        for peer in [*peers, "constriction Huffman"][: 3 if coder == "huffman" else 2]:
            for i, what in enumerate(("encode M symbols/s", "decode M symbols/s", "bits/symbol")):
                measure = f"{what}; reference {peer}"
                rows.append(_row(case, measure, speed[coder][i], speed[peer][i]))
    return rows


def _speed(stream, encode, decode, repeats: int = 3) -> tuple[float, float, float]:
    """Best of `repeats` (the machine may be shared); checks the round trip."""
    t_enc, t_dec = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        data = encode(stream)
        t_enc.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = decode(data)
        t_dec.append(time.perf_counter() - start)
    assert np.array_equal(out, stream)
    n = stream.size
    return n / min(t_enc) / 1e6, n / min(t_dec) / 1e6, 8 * len(data) / n


def _huffman_codec(alphabet: int, n: int):
    plans = {}

    def encode(stream):
        plans["p"] = plan = huffman.plan(stream, alphabet)
        return huffman.encode(stream, plan)

    def decode(data):
        p = plans["p"]
        return huffman.decode(data, alphabet=alphabet, count=n, length_width=p.length_width,
                              block=p.block, block_width=p.block_width)  # fmt: skip

    return encode, decode


def _ans_codec(alphabet: int, n: int):
    plans = {}

    def encode(stream):
        plans["p"] = plan = ans.plan(np.bincount(stream, minlength=alphabet))
        return ans.encode(stream, plan)

    return encode, lambda data: ans.decode(
        data, alphabet=alphabet, count=n, table_width=plans["p"].table_width
    )


def _constriction_codec(p: np.ndarray, n: int):
    model = constriction.stream.model.Categorical(p, perfect=False)

    def encode(stream):
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(stream.astype(np.int32), model)
        return coder.get_compressed().tobytes()

    def decode(data):
        words = np.frombuffer(data, dtype=np.uint32)
        return constriction.stream.stack.AnsCoder(words).decode(model, n)

    return encode, decode


def _constriction_huffman(p: np.ndarray):
    huff = constriction.symbol.huffman

    def encode(stream):
        encoder, tree = constriction.symbol.QueueEncoder(), huff.EncoderHuffmanTree(p)
        for s in stream.tolist():
            encoder.encode_symbol(s, tree)
        return encoder.get_compressed_and_bitrate()[0].tobytes()

    def decode(data):
        words = np.frombuffer(data, dtype=np.uint32)
        decoder, tree = constriction.symbol.QueueDecoder(words), huff.DecoderHuffmanTree(p)
        return np.array([decoder.decode_symbol(tree) for _ in range(200_000)])

    return encode, decode


def deep_compression_rows(name: str, cache: Path | None, tmp: Path) -> list[dict]:
    """Prune -> retrain -> k-means -> fine-tune centroids -> pack -> decode, as Deep Compression
    does; the pruned model is bench/pipeline.py's (the one bench/prune.py measures)."""
    from netshrink.share import ShareKmeansConfig, share_kmeans

    _, meta, _, base_fit = _baseline(name, cache)
    _, model, data = pruned_baseline(name)
    share_kmeans(model, ShareKmeansConfig(**SHARE_BITS[name]), progress=False)
    fit(
        model,
        data,
        relative_fit(CENTROID_FINETUNE, base_fit, Stage.finetune_lr_divisor),
        progress=False,
    )
    path = pack(model, tmp / f"{name}.nsk", PackConfig(index_bits="best"), meta=meta)
    decoded = unpack(path)
    top1 = evaluate(decoded, data.loader("test", 512)).top1
    dense = 4 * sum(t.numel() for t in effective_state_dict(decoded).values())
    size = path.stat().st_size
    bits = ", ".join(f"{k} {v}" for k, v in SHARE_BITS[name].items())
    case = f"Deep Compression {name} (pruned by bench/pipeline.py, k-means {bits})"
    ratio = dense / size
    return [
        _row(
            case,
            "file ratio; reference fp32 bytes (ratio = reference / .nsk)",
            size,
            dense,
            f">= {PAPER_RATIO[name]}x",
            ratio >= PAPER_RATIO[name],
            ratio=ratio,
        ),  # fmt: skip
        _row(
            case,
            "top-1 of the decoded model; reference dense baseline",
            top1,
            meta.metrics["test_top1"],
        ),  # fmt: skip
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="baseline cache directory")
    parser.add_argument("--symbols", type=int, default=10_000_000)
    parser.add_argument("--no-deep-compression", action="store_true")
    args = parser.parse_args()
    rows, notes, sources = [], [], {}
    with TemporaryDirectory() as tmp:
        for name in PAPER_KEEP:
            model, meta, _, _ = _baseline(name, args.cache)
            streams, sources[name] = stream_rows(name, _prune(model, name))
            rows += streams + file_rows(f"{name} pruned (paper densities)", model, meta, Path(tmp))
        rows += speed_rows(sources["lenet300_100"], args.symbols)
        if args.no_deep_compression or importlib.util.find_spec("netshrink.share") is None:
            notes.append("The Deep Compression rows are left out: netshrink.share is not there.")
        else:
            for name in PAPER_KEEP:
                rows += deep_compression_rows(name, args.cache, Path(tmp))
    publish("codec", "Codec: entropy, file size and speed", rows, COLUMNS, notes=_notes(notes))


def _notes(extra: list[str]) -> str:
    return " ".join(
        [
            "Bits per symbol include each coder's tables (Huffman code and block lengths; the ANS",
            "frequency table and final state); H0 is the stream's order-0 empirical entropy.",
            f"Targets apply to streams of at least {SMALL_STREAM:,} symbols and to the totals: in",
            "smaller streams the tables alone exceed 1%. Throughput: one thread, best of 3 runs,",
            "plan + code for ours. Deep Compression rows: the baseline pruned by bench/pipeline.py",
            "(iterative std thresholds with retraining, as bench/prune.py measures), k-means",
            f"(linear init), {CENTROID_FINETUNE.epochs} epochs of centroid fine-tuning at the",
            "baseline's learning rate / 10, packed with index_bits=best; the file includes its",
            "header and the fp32 biases; its size depends on the entropy of the k-means codes,",
            "which netshrink.share produces (see `netshrink inspect`).",
            *extra,
        ]
    )


if __name__ == "__main__":
    main()
