"""`netshrink pack`, `netshrink unpack` and `netshrink inspect`: the compressed file on the command
line."""

import argparse
from pathlib import Path

from ..checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from ..codec.api import load_packed_checkpoint, pack
from ..codec.encodings import PackConfig
from ..codec.summary import print_summary, summarize
from ..files import refuse_overwrite_input
from ..measure import dense_bytes
from ..report import console
from ..untrusted import MAX_DECODED_BYTES
from .common import make_config


def add_commands(commands) -> None:
    """Register `pack`, `unpack` and `inspect` on the top-level sub-command parser."""
    _add_pack(commands)
    _add_unpack(commands)
    i = commands.add_parser(
        "inspect",
        help="per-tensor table of a .nsk file",
        description="Decode a .nsk file and print each tensor's encoding and each stream's "
        "coder, size, bits per symbol and order-0 entropy bound.",
    )
    i.add_argument("file", type=Path, help="the .nsk file")
    _add_max_decoded(i)
    i.set_defaults(run=run_inspect)


def _add_max_decoded(p) -> None:
    p.add_argument(
        "--max-decoded",
        type=_megabytes,
        default=MAX_DECODED_BYTES,
        metavar="MB",
        help=f"most memory (MiB) the file may decode to; default {MAX_DECODED_BYTES >> 20}. "
        "Raise it only for a large file you trust",
    )


def _megabytes(text: str) -> int:
    """argparse type for --max-decoded: a positive number of MiB, as bytes."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1 << 40:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of MiB")
    return int(value * (1 << 20))


def _add_pack(commands) -> None:
    p = commands.add_parser(
        "pack",
        help="write a checkpoint as one compressed .nsk file",
        description="Compress a checkpoint into a .nsk file: pruned tensors as relative indices "
        "(Deep Compression), few-valued tensors as codebooks, every index stream coded with the "
        "smallest of bit-packing, canonical Huffman and rANS. See docs/format.md.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint (.safetensors, .json or their stem)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output file (model.nsk)")
    p.add_argument(
        "--index-bits",
        default="paper",
        help="relative-index bits: paper (8 conv / 5 fc), best, or a number 1..16",
    )
    p.add_argument("--float16", action="store_true", help="store raw float values at fp16 (lossy)")
    p.add_argument(
        "--coders",
        type=lambda s: tuple(c for c in s.split(",") if c),
        default=None,
        help="comma-separated coders to choose from (bits,huffman,ans; default all)",
    )
    p.set_defaults(run=run_pack)


def _add_unpack(commands) -> None:
    u = commands.add_parser(
        "unpack",
        help="decode a .nsk file to a checkpoint",
        description="Decode a .nsk file (checksums and sizes checked, nothing unpickled) and "
        "write it as a checkpoint (safetensors + JSON sidecar).",
    )
    u.add_argument("file", type=Path, help="the .nsk file")
    u.add_argument("-o", "--out", type=Path, required=True, help="checkpoint path (no suffix)")
    _add_max_decoded(u)
    u.set_defaults(run=run_unpack)


def run_pack(args) -> None:
    index_bits = int(args.index_bits) if args.index_bits.isdigit() else args.index_bits
    fields = {"index_bits": index_bits, "float16": args.float16, "coders": args.coders}
    config = make_config(PackConfig, **fields)
    refuse_overwrite_input([args.out], checkpoint_paths(args.checkpoint))
    model, meta = load_checkpoint(args.checkpoint, allow_import=args.allow_import)
    out = pack(model, args.out, config, meta=meta)
    size = out.stat().st_size
    dense = dense_bytes(model)
    console().print(f"{out}: {size:,} bytes ({dense / size:.1f}x smaller than fp32 weights)")


def run_unpack(args) -> None:
    refuse_overwrite_input(checkpoint_paths(args.out), [args.file])
    model, meta = load_packed_checkpoint(
        args.file, allow_import=args.allow_import, max_decoded_bytes=args.max_decoded
    )
    out = save_checkpoint(model, args.out, meta)
    console().print(f"{out}.safetensors: {len(model.state_dict())} tensors")


def run_inspect(args) -> None:
    print_summary(summarize(args.file, args.max_decoded))
