"""What every benchmark does with its numbers: a printed table, `bench/results/NAME.json` (the
command, the date, one row a case with its numbers and its target), and the same table in
`docs/benchmarks.md` between `<!-- bench:NAME -->` markers, with the command that made it."""

import datetime
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from netshrink.measure import measure_latency
from netshrink.report import console

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def source_commit() -> str:
    """The commit whose code is running ("+changes": with uncommitted edits to the code)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()  # fmt: skip
        edits = subprocess.run(["git", "status", "--porcelain", "--", "src", "bench/*.py",
                                "recipes"], cwd=ROOT, text=True, capture_output=True,
                               check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if edits else "")


# read when a benchmark starts, not when it publishes: a commit made while it runs is not its code
SOURCE = source_commit()


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def publish(name: str, title: str, rows: list[dict], columns: list[str], notes: str = "") -> None:
    """Print `rows` as a table, write the JSON result and refresh the section in the doc."""
    command, date = command_line(), datetime.date.today().isoformat()
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"name": name, "command": command, "date": date, "commit": SOURCE, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    made_by = f"`{command}` ({date}, commit {SOURCE})"
    _update_doc(name, _markdown(title, made_by, rows, columns, notes))


def merge_published(name: str, rows: list[dict], part, order) -> tuple[list[dict], str]:
    """A partial rerun's `rows` with the published rows of NAME.json that it did not rerun kept:
    `part(row)` names the part of the benchmark a row belongs to (a part this run made replaces
    every published row of it), `order(part)` sorts the parts. A kept row carries the command
    that made it (`made by`, kept over later partial reruns). Also returns a sentence saying
    which rows earlier commands made ("" when none were kept)."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return rows, ""
    published = json.loads(path.read_text())
    rerun = {part(row) for row in rows}
    commit = f", commit {published['commit']}" if "commit" in published else ""
    made_by = f"`{published['command']}` ({published['date']}{commit})"
    kept = [{"made by": made_by, **row} for row in published["rows"] if part(row) not in rerun]
    if not kept:
        return rows, ""
    merged = sorted(kept + rows, key=lambda row: order(part(row)))  # stable: rows keep their order
    by_command: dict[str, dict[str, None]] = {}
    for row in kept:
        by_command.setdefault(row["made by"], {})[str(part(row))] = None
    sentences = [
        f"The rows of {', '.join(parts)} are from {command}."
        for command, parts in by_command.items()
    ]
    return merged, " " + " ".join(sentences)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _markdown(title, made_by, rows, columns, notes) -> str:
    lines = [f"## {title}", "", f"Command: {made_by}", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines + ([""] + [notes] if notes else [])) + "\n"


def _update_doc(name: str, section: str) -> None:
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Benchmarks\n\nThe latest results, each with the command that made it.\n"
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(replace_block(text, name, section))


def replace_block(text: str, name: str, section: str) -> str:
    """`text` with the block between the `<!-- bench:NAME -->` markers replaced by `section`
    (appended at the end when the markers are missing)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{section}{end}"
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def latency_ratio(dense, pruned, input_shape, *, batch_size: int = 1, threads: int = 1) -> float:
    """dense / pruned median latency, the two measured alternately so that drift hits both."""
    times: dict[int, list[float]] = {id(dense): [], id(pruned): []}
    for _ in range(5):
        for model in (dense, pruned):
            times[id(model)].append(
                measure_latency(
                    model, input_shape, batch_size=batch_size, threads=threads, repeats=20
                )
            )
    return statistics.median(times[id(dense)]) / statistics.median(times[id(pruned)])
