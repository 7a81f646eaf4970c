"""The README's "How it compares" section, rebuilt from the benchmarks' results (never typed in).

    python bench/readme.py

Reads bench/results/peers.json, peers_filters.json and papers.json (written by bench/peers.py and
bench/papers.py, which call `refresh` after publishing) and rewrites the block between the
`<!-- bench:readme -->` markers of README.md: a few headline rows of each, with the commands and
dates that measured them. The full tables stay in docs/benchmarks.md.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, replace_block  # noqa: E402
from peers_fronts import equal_loss_rows  # noqa: E402
from peers_tables import (  # noqa: E402
    GOAL,
    _pt,
    _ratio,
    _table,
    most_macs_removed,
)

README = ROOT / "README.md"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _source(result: dict) -> str:
    return f"`{result['command']}`, {result['date']}"


def size_rows(rows: list[dict]) -> list[list]:
    """Per model and loss bound: netshrink's file (chosen on validation) beside the best peer's
    front at its loss (bench/peers_fronts.py)."""
    (_, *lines), _ = equal_loss_rows(rows)
    return [
        [model, bound, f"{bytes_} B, {loss} pt" if bytes_ != "-" else "none", peer, ratio,
         _emphasis(verdict) if bytes_ != "-" else f"**missed** ({verdict})"]
        for model, bound, _, _, loss, bytes_, peer, ratio, verdict in lines
    ]  # fmt: skip


def _emphasis(verdict: str) -> str:
    return f"**{verdict}**" if verdict == "missed" else verdict


def ptq_rows(rows: list[dict]) -> tuple[list[list], list[str]]:
    """Post-training int8 of the dense model: each tool's loss and file per model; the models."""
    ptq = [r for r in rows if r["kind"] == "ptq"]
    models = list(dict.fromkeys(r["model"] for r in ptq))
    index = {(r["tool"], r["model"]): r for r in ptq}
    return [
        [tool, *(f"{_pt(index[tool, m]['loss pt'])} pt, {index[tool, m]['file bytes']:,} B"
                 if (tool, m) in index else "-" for m in models)]
        for tool in dict.fromkeys(r["tool"] for r in ptq)
    ], models  # fmt: skip


def filter_rows(rows: list[dict]) -> list[list]:
    """Per model and tool, the most MACs removed at <= 1 pt loss, with the latency ratio."""
    return [
        [model, tool, f"{best['MACs removed']:.1%}", _pt(best["loss pt"]),
         _ratio(best.get("latency ratio @1"))] if best else [model, tool, "none", "-", "-"]
        for model, tool, best in most_macs_removed(rows)
    ]  # fmt: skip


def paper_rows(rows: list[dict]) -> list[list]:
    """Each recipe's finished result: its packed file's rows."""
    keep = [r for r in rows if r["stage"].startswith("packed") and r.get("loss pt") is not None]
    return [[r["model"], r["stage"], r.get("seeds") or "-", f"{r['ratio']:.1f}x",
             _pt(r["loss pt"]), r["paper"] or "-"] for r in keep]  # fmt: skip


def _made_by(result: dict, rows: list[dict]) -> str:
    """The commands that measured `rows`: a row kept from an earlier partial run names its own
    (`made by`, bench/common.merge_published), the others the result's."""
    own = f"`{result['command']}` ({result['date']})"
    return "; ".join(dict.fromkeys(row.get("made by", own) for row in rows))


def section() -> str:
    """The README block's Markdown from whichever results exist."""
    parts = ["## How it compares", ""]
    peers, filters, papers = _load("peers"), _load("peers_filters"), _load("papers")
    if peers:
        parts += [
            "**Size at equal loss** (Fashion-MNIST): netshrink's smallest file within each top-1 "
            "loss bound (chosen on the validation split, loss on test) beside the best peer's "
            "size at that loss, read off its size-vs-loss front (PyTorch by hand, ONNX Runtime, "
            "NNCF, Brevitas incl. 4- / 2-bit QAT, torchao; zip / xz applied where smaller). "
            f"Goal: >= {GOAL:g}x smaller. Measured by {_made_by(peers, peers['rows'])}.",
            "",
            _table(
                [
                    "model",
                    "bound",
                    "netshrink",
                    "best peer's front there, B",
                    "smaller by",
                    f"goal {GOAL:g}x",
                ],
                size_rows(peers["rows"]),
            ),  # fmt: skip
            "",
        ]
        lines, models = ptq_rows(peers["rows"])
        parts += [
            "**Post-training int8** of the dense model, no retraining: top-1 loss and file bytes.",
            "",
            _table(["tool", *models], lines),
            "",
        ]
    if filters:
        parts += [
            "**Filter pruning** with the same fine-tuning: the most MACs removed at <= 1 pt, and "
            f"dense / pruned latency at batch 1 on one thread. Measured by {_source(filters)}.",
            "",
            _table(
                ["model", "tool", "MACs removed", "loss pt", "latency ratio"],
                filter_rows(filters["rows"]),
            ),  # fmt: skip
            "",
        ]
    if papers:
        packed = [r for r in papers["rows"] if r["stage"].startswith("packed")]
        parts += [
            "**The papers at CPU scale**, each recipe's packed file (Fashion-MNIST here; the "
            "papers' own figures, mostly MNIST, as context; every stage in docs/benchmarks.md). "
            f"Measured by {_made_by(papers, packed)}.",
            "",
            _table(
                ["model", "stage", "seeds", "ratio (median)", "loss pt (median)", "paper"],
                paper_rows(papers["rows"]),
            ),
            "",
        ]
    parts.append(
        "Every table in full, with its method notes: [docs/benchmarks.md](docs/benchmarks.md)."
    )
    return "\n".join(parts) + "\n"


def refresh() -> None:
    """Rewrite README.md's `bench:readme` block from the current results."""
    README.write_text(replace_block(README.read_text(), "readme", section()))


if __name__ == "__main__":
    refresh()
    print(section())
