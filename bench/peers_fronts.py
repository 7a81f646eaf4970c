"""Fronts, not points: each tool's size vs top-1 loss front from bench/peers.py's measured rows,
and "x times smaller at equal loss" read off the best peer's front at netshrink's loss.

A front is the Pareto set of a tool's points (no other point of it is both smaller and less
lossy). Between two front points the peer's size at a loss is interpolated linearly in log size
(sizes fall geometrically as the loss grows); outside its measured losses nothing is
extrapolated: at a loss beyond the peer's largest, its smallest file is an upper bound on what it
would need ("at most"); below its smallest loss, its least lossy file a lower bound ("at
least"). The dense fp32 baseline is a peer point at 0 pt, so a peer's front always starts there.

netshrink's point for a bound is chosen on the validation split (its smallest file whose
validation loss is within the bound) and reported on test; the peer's front is read at that
test loss.
"""

import math
from dataclasses import dataclass

from peers_tables import BOUNDS, GOAL, US, _pt, _table


@dataclass(frozen=True)
class Point:
    loss: float  # top-1 loss in points against the dense baseline (test split)
    size: int  # bytes as stored (the smallest of file / zip / xz)
    label: str  # the pipeline that made it


@dataclass(frozen=True)
class Reading:
    """A peer front read at one loss: the size, and whether it is interpolated ("="), an upper
    bound ("<=", the loss lies beyond the front) or a lower bound (">=", before it)."""

    size: float
    relation: str


def points(rows: list[dict]) -> list[Point]:
    return [Point(r["loss pt"], r["smallest"], r["pipeline"]) for r in rows]


def pareto(found: list[Point]) -> list[Point]:
    """The points no other point beats on both size and loss, by increasing loss (and so by
    decreasing size)."""
    front: list[Point] = []
    for point in sorted(found, key=lambda p: (p.loss, p.size)):
        if not front or point.size < front[-1].size:
            front.append(point)
    return front


def size_at(front: list[Point], loss: float) -> Reading | None:
    """The front's size at `loss` (see the module docstring); None for an empty front."""
    if not front:
        return None
    if loss < front[0].loss:
        return Reading(front[0].size, ">=")
    if loss >= front[-1].loss:
        return Reading(front[-1].size, "=" if loss == front[-1].loss else "<=")
    for low, high in zip(front, front[1:], strict=False):
        if low.loss <= loss < high.loss:
            t = (loss - low.loss) / (high.loss - low.loss)
            return Reading(math.exp((1 - t) * math.log(low.size) + t * math.log(high.size)), "=")
    raise AssertionError("unreachable: the front's losses are sorted")


def fronts(rows: list[dict]) -> dict[str, list[Point]]:
    """Each tool's front from one model's rows."""
    tools = dict.fromkeys(r["tool"] for r in rows)
    return {tool: pareto(points([r for r in rows if r["tool"] == tool])) for tool in tools}


def chosen(ours: list[dict], bound: float) -> dict | None:
    """netshrink's row for `bound`: the smallest file whose validation loss is within it (its
    test loss where a row has no validation top-1)."""
    inside = [r for r in ours if _choosing_loss(r) <= bound]
    return min(inside, key=lambda r: r["smallest"]) if inside else None


def _choosing_loss(row: dict) -> float:
    value = row.get("val loss pt")
    return row["loss pt"] if value is None else value


def best_peer(model_rows: list[dict], loss: float) -> tuple[str, Reading] | None:
    """The peer whose front needs the fewest bytes at `loss`, and its reading."""
    readings = {
        tool: size_at(front, loss)
        for tool, front in fronts(model_rows).items()
        if tool != US and front
    }
    if not readings:
        return None
    tool = min(readings, key=lambda t: readings[t].size)
    return tool, readings[tool]


HEADER = ["model", "bound (validation)", "netshrink pipeline", "val loss pt", "test loss pt",
          "bytes", "best peer's front at that loss, B", "smaller by", "goal"]  # fmt: skip


def equal_loss_rows(rows: list[dict]) -> tuple[list[list], list[str]]:
    """Per model and bound: netshrink's validation-chosen file, the best peer front's size at its
    test loss, the ratio and the goal's verdict (HEADER's columns); and one sentence each."""
    lines, verdicts = [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        for bound in BOUNDS:
            line, verdict = _bound_line(model, bound, mine)
            lines.append(line)
            verdicts.append(verdict)
    return [HEADER, *lines], verdicts


def _bound_line(model: str, bound: float, mine: list[dict]) -> tuple[list, str]:
    head = f"{model}, <= {bound:g} pt"
    row = chosen([r for r in mine if r["tool"] == US and r["kind"] != "ptq"], bound)
    peer = best_peer(mine, row["loss pt"]) if row else None
    if row is None or peer is None:
        why = "no peer front" if row else "no netshrink file within the bound on validation"
        return [model, f"<= {bound:g} pt", *["-"] * 6, why], f"{head}: {why}; goal **missed**."
    tool, reading = peer
    ratio, word = reading.size / row["smallest"], _relation_word(reading.relation)
    verdict = _verdict(ratio, reading.relation)
    line = [model, f"<= {bound:g} pt", row["pipeline"], _val(row), _pt(row["loss pt"]),
            f"{row['smallest']:,}", f"{tool}: {word}{reading.size:,.0f}", f"{word}{ratio:.2f}x",
            verdict]  # fmt: skip
    sentence = (
        f"{head}: netshrink {row['smallest']:,} B at {_pt(row['loss pt'])} pt test; {tool}'s "
        f"front at that loss: {word}{reading.size:,.0f} B; {word}{ratio:.2f}x smaller; goal >= "
        f"{GOAL:g}x **{verdict}**."
    )
    return line, sentence


def _val(row: dict) -> str:
    value = row.get("val loss pt")
    return "-" if value is None else _pt(value)


def _relation_word(relation: str) -> str:
    return {"=": "", "<=": "at most ", ">=": "at least "}[relation]


def _verdict(ratio: float, relation: str) -> str:
    """Met where the ratio is >= GOAL, or shown to be (a lower bound >= GOAL); missed where it
    is below or bounded below GOAL; otherwise undecided (an upper bound above GOAL)."""
    if ratio >= GOAL and relation in ("=", ">="):
        return "met"
    if ratio < GOAL and relation in ("=", "<="):
        return "missed"
    return "undecided (beyond the peer's measured losses)"


def equal_loss_table(rows: list[dict]) -> tuple[str, list[str]]:
    (header, *lines), verdicts = equal_loss_rows(rows)
    return _table(header, lines), verdicts


def plot_fronts(rows: list[dict], path) -> None:
    """One panel per model: every tool's points (size on a log axis vs test loss) and its front
    as a step line; netshrink drawn on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        for tool, front in fronts(mine).items():
            everything = points([r for r in mine if r["tool"] == tool])
            style = {"zorder": 3, "linewidth": 2.2} if tool == US else {"alpha": 0.8}
            line = ax.plot([p.loss for p in front], [p.size for p in front], marker="o",
                           label=tool, **style)[0]  # fmt: skip
            ax.scatter([p.loss for p in everything], [p.size for p in everything],
                       color=line.get_color(), s=12, alpha=0.5)  # fmt: skip
        for bound in BOUNDS:
            ax.axvline(bound, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("top-1 loss, pt (test)")
        ax.set_ylabel("bytes as stored")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
