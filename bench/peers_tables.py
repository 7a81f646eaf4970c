"""The derived tables of bench/peers.py, computed from its measured rows (never typed in) and
rendered as Markdown: (1) size at equal accuracy and the 3x goal, (2) accuracy at the peers'
int8 size, (3) filter pruning, (4) post-training int8, (6) wall time."""

BOUNDS = (0.5, 1.0)
GOAL = 3.0
US = "netshrink"


def _table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in line) + " |" for line in lines])


def _pt(value: float) -> str:
    return f"{value:.2f}"


def _bytes(row: dict) -> str:
    return f"{row['smallest']:,} ({row['stored as']})"


def _models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def _smallest(rows: list[dict], bound: float) -> dict | None:
    inside = [r for r in rows if r["loss pt"] <= bound]
    return min(inside, key=lambda r: r["smallest"]) if inside else None


def size_table(rows: list[dict]) -> tuple[str, list[str]]:
    """(1): per model and loss bound, each tool's smallest file; and the goal verdicts."""
    lines, verdicts = [], []
    for model in _models(rows):
        mine = [r for r in rows if r["model"] == model]
        for bound in BOUNDS:
            best = {}
            for tool in dict.fromkeys(r["tool"] for r in mine):
                found = _smallest([r for r in mine if r["tool"] == tool], bound)
                if found is not None:
                    best[tool] = found
            for tool, r in sorted(best.items(), key=lambda item: item[1]["smallest"]):
                lines.append([model, f"<= {bound:g} pt", tool, r["pipeline"], _bytes(r),
                              f"{r['ratio']:.1f}x", _pt(r["loss pt"])])  # fmt: skip
            verdicts.append(_verdict(model, bound, best, [r for r in mine if r["tool"] == US]))
    header = ["model", "loss bound", "tool", "pipeline", "bytes (stored as)", "ratio", "loss pt"]
    return _table(header, lines), verdicts


def _verdict(model: str, bound: float, best: dict, ours: list[dict]) -> str:
    """The goal: netshrink's smallest file within the bound >= 3x smaller than the best peer's
    within the same bound; the losses are named, and so is a netshrink loss above the peer's."""
    head = f"{model}, <= {bound:g} pt"
    peers = [r for tool, r in best.items() if tool != US]
    if not peers:
        return f"{head}: no peer file within the bound; goal not assessed."
    peer = min(peers, key=lambda r: r["smallest"])
    said = (f"best peer {peer['tool']} ({peer['pipeline']}) {peer['smallest']:,} B at "
            f"{_pt(peer['loss pt'])} pt")  # fmt: skip
    within = best.get(US)
    if within is None:
        return f"{head}: {said}; netshrink has no file within the bound: goal **missed**."
    ratio = peer["smallest"] / within["smallest"]
    higher = within["loss pt"] > peer["loss pt"]
    verdict = goal_verdict(peer, within)
    return (f"{head}: {said}; netshrink ({within['pipeline']}) {within['smallest']:,} B at "
            f"{_pt(within['loss pt'])} pt{' (more loss than the peer)' if higher else ''}: "
            f"{ratio:.2f}x smaller; goal >= {GOAL:g}x **{verdict}**.")  # fmt: skip


def goal_verdict(peer: dict, ours: dict) -> str:
    """ "met" when netshrink's file is >= GOAL x smaller at no more loss than the peer's; "met
    only within the bound" when smaller enough but with more loss; else "missed"."""
    if peer["smallest"] / ours["smallest"] < GOAL:
        return "missed"
    return "met only within the bound" if ours["loss pt"] > peer["loss pt"] else "met"


def int8_size_table(rows: list[dict]) -> str:
    """(2): at each peer's post-training int8 file size, netshrink's most accurate file no
    larger than it."""
    lines = []
    for peer in (r for r in rows if r["kind"] == "ptq" and r["tool"] != US):
        ours = [r for r in rows if r["model"] == peer["model"] and r["tool"] == US
                and r["smallest"] <= peer["smallest"]]  # fmt: skip
        best = max(ours, key=lambda r: (r["top-1"], -r["smallest"])) if ours else None
        lines.append([peer["model"], peer["tool"], _bytes(peer), f"{peer['top-1']:.4f}",
                      best["pipeline"] if best else "-", _bytes(best) if best else "-",
                      f"{best['top-1']:.4f}" if best else "-",
                      f"{100 * (best['top-1'] - peer['top-1']):+.2f}" if best else "-"])  # fmt: skip
    header = ["model", "peer int8", "peer bytes", "peer top-1", "netshrink file <= that size",
              "netshrink bytes", "netshrink top-1", "difference pt"]  # fmt: skip
    return _table(header, lines)


def _pivot(rows: list[dict], keep, cell) -> str:
    """Rows (tool, pipeline) x columns (models), `cell(row)` in each."""
    models = _models(rows)
    keys = list(dict.fromkeys((r["tool"], r["pipeline"]) for r in rows if keep(r)))
    index = {(r["tool"], r["pipeline"], r["model"]): r for r in rows if keep(r)}
    lines = []
    for tool, pipeline in keys:
        cells = [index.get((tool, pipeline, m)) for m in models]
        lines.append([tool, pipeline, *(cell(c) if c else "-" for c in cells)])
    return _table(["tool", "pipeline", *models], lines)


def ptq_table(rows: list[dict]) -> str:
    """(4): post-training int8, top-1 (loss pt) and the file's bytes, per model."""
    return _pivot(rows, lambda r: r["kind"] == "ptq",
                  lambda r: f"{r['top-1']:.4f} ({_pt(r['loss pt'])} pt), {r['file bytes']:,} B")  # fmt: skip


def time_table(rows: list[dict]) -> str:
    """(6): each pipeline's wall time in seconds (median over its seeds)."""
    return _pivot(rows, lambda r: r["kind"] != "reference", lambda r: f"{r['seconds']:.1f}")


def most_macs_removed(rows: list[dict], bound: float = 1.0) -> list[tuple[str, str, dict | None]]:
    """(model, tool, its filter-pruning row removing the most MACs within `bound` pt, or None)
    for every model and tool with filter-pruning rows."""
    found = []
    for model in _models(rows):
        mine = [r for r in rows if r["model"] == model and r["kind"] == "filters"]
        for tool in dict.fromkeys(r["tool"] for r in mine):
            inside = [r for r in mine if r["tool"] == tool and r["loss pt"] <= bound]
            found.append((model, tool, max(inside, key=lambda r: r["MACs removed"], default=None)))
    return found


def filter_table(rows: list[dict]) -> str:
    """(3) Filter pruning: per tool, the most MACs removed at <= 1 pt loss, with its latency."""
    lines = []
    for model, tool, best in most_macs_removed(rows):
        if best is None:
            lines.append([model, tool, "none within 1 pt", "-", "-", "-", "-", "-"])
            continue
        lines.append([model, tool, best["pipeline"], f"{best['MACs removed']:.1%}",
                      _pt(best["loss pt"]), _ratio(best.get("latency ratio @1")),
                      _ratio(best.get("latency ratio @64")), _bytes(best)])  # fmt: skip
    header = ["model", "tool", "pipeline", "MACs removed at <= 1 pt", "loss pt",
              "latency ratio @1", "latency ratio @64", "bytes (stored as)"]  # fmt: skip
    return _table(header, lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
