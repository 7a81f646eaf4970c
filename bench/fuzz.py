"""Long fuzz of the .nsk reader: mutated and forged files into `unpack` and `inspect`, each under
an address-space limit and a per-input time limit (issue 17, "Hostile files").

    python bench/fuzz.py [--count 1000000] [--workers 2] [--seed 0] [--memory-mib 1536]
                         [--seconds 1.0]

Inputs come from bench/forge.py's seed files (a tiny vgg_small dense, pruned, k-means shared,
SVD-factored, filter-pruned, batch-norm-folded and fixed point; three coder settings each): 40%
header forgeries with every CRC recomputed, 60% byte-level mutations (bit flips, inserts,
deletes, splices; half with the CRCs then recomputed). Input i is a pure function of (seed, i),
so any input can be made again. Long-lived workers each set RLIMIT_AS to what they map after
warming up plus --memory-mib and give every input --seconds of CPU time (setitimer
ITIMER_PROF: what the input costs, not how loaded the machine was); a worker that dies is
replaced. Outcomes: ok (decoded), error (a netshrink Error), crash (any other exception),
memory (MemoryError or the worker killed), time (over the limit). Every input that is not ok or
error is saved as tests/corpus/<outcome>-<sha>.nsk (with its traceback as .txt), where
tests/codec/test_forged_files.py replays it. Writes bench/results/fuzz.json and the fuzz
section of docs/benchmarks.md.
"""

import argparse
import hashlib
import multiprocessing
import multiprocessing.connection
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import forge  # noqa: E402
from common import ROOT, publish  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
OUTCOMES = ("ok", "error", "crash", "memory", "time")
TARGETS = {"crash": 0, "memory": 0, "time": 0}
BATCH = 500  # inputs a worker takes at a time
mp = multiprocessing.get_context("spawn")  # a fork of a process that has run torch can hang


class OverTime(Exception):
    """Raised by the interval timer inside a decode that ran past its limit."""


def make_input(seeds: list[bytes], seed: int, index: int) -> bytes:
    """Input `index` of the run with `seed`: a header forgery or a byte-level mutation."""
    rng = random.Random(f"{seed}:{index}")
    data = rng.choice(seeds)
    if rng.random() < 0.4:
        return forge.forge(data, rng)
    return forge.mutate_bytes(data, rng, rng.choice(seeds))


def _run_one(path: Path, seconds: float) -> tuple[str, str]:
    """(outcome, traceback) of `unpack` then `inspect` on one file."""
    from netshrink.codec.api import load_packed
    from netshrink.codec.summary import summarize
    from netshrink.errors import Error

    outcome = "ok"
    for decode in (load_packed, summarize):
        signal.setitimer(signal.ITIMER_PROF, seconds)
        try:
            decode(path)
        except Error:
            outcome = "error"
        except OverTime:
            return "time", decode.__name__
        except MemoryError:
            return "memory", traceback.format_exc()
        except Exception:
            return "crash", traceback.format_exc()
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    return outcome, ""


def _worker(conn, seeds: list[bytes], args, current) -> None:
    def over_time(signum, frame):
        raise OverTime()

    signal.signal(signal.SIGPROF, over_time)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which drains us
    path = Path(tempfile.mkdtemp()) / "input.nsk"
    for data in seeds:  # imports and first-call costs, before the limits apply
        path.write_bytes(data)
        _run_one(path, 60.0)
    forge.limit_memory(args.memory_mib << 20)
    while (task := conn.recv()) is not None:
        counts, found = dict.fromkeys(OUTCOMES, 0), []
        for index in range(*task):
            current.value = index
            data = make_input(seeds, args.seed, index)
            path.write_bytes(data)
            outcome, trace = _run_one(path, args.seconds)
            counts[outcome] += 1
            if outcome not in ("ok", "error"):
                found.append((outcome, index, trace))
        conn.send((counts, found))


class Worker:
    """One long-lived child process and the batch it is working on."""

    def __init__(self, seeds, args):
        self.current = mp.Value("q", -1)
        self.conn, child = mp.Pipe()
        self.process = mp.Process(target=_worker, args=(child, seeds, args, self.current))
        self.process.start()
        self.task = None

    def give(self, task) -> None:
        self.task = task
        self.conn.send(task)


def _save(outcome: str, data: bytes, trace: str) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    path = CORPUS / f"{outcome}-{hashlib.sha256(data).hexdigest()[:16]}.nsk"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(trace)
    return path


def fuzz(args, seeds: list[bytes]) -> dict[str, int]:
    """Run every input through the workers; returns the outcome counts. SIGINT or SIGTERM stops
    handing out batches: the ones under way finish and the counts so far are returned, so an
    interrupted run still publishes what it measured."""
    stop = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.append(True))
    tasks = [(i, min(i + BATCH, args.count)) for i in range(0, args.count, BATCH)]
    tasks.reverse()
    counts = dict.fromkeys(OUTCOMES, 0)
    workers = [Worker(seeds, args) for _ in range(args.workers)]
    busy = []
    start, last = time.time(), 0.0
    while tasks or busy:
        if stop:
            tasks.clear()
        for worker in workers:
            if worker.task is None and tasks:
                worker.give(tasks.pop())
                busy.append(worker)
        waiting = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = multiprocessing.connection.wait(waiting)
        for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
            try:
                done, found = worker.conn.recv()
            except (EOFError, ConnectionResetError):  # killed: the input it was on is "memory"
                _replace_dead(worker, workers, tasks, counts, seeds, args)
                busy.remove(worker)
                continue
            for outcome, index, trace in found:
                _save(outcome, make_input(seeds, args.seed, index), trace)
            for k, v in done.items():
                counts[k] += v
            worker.task = None
            busy.remove(worker)
        if time.time() - last > 30:
            last = time.time()
            done_n = sum(counts.values())
            print(f"{done_n:,}/{args.count:,} in {last - start:.0f}s: {counts}", flush=True)
    for worker in workers:
        worker.conn.send(None)
        worker.process.join()
    return counts


def _replace_dead(worker, workers, tasks, counts, seeds, args) -> None:
    index = worker.current.value
    first, end = worker.task
    counts["memory"] += 1
    _save("memory", make_input(seeds, args.seed, index), f"worker killed at input {index}")
    # the rest of its batch goes back on the queue, the inputs before `index` included
    if index + 1 < end:
        tasks.append((index + 1, end))
    if first < index:
        tasks.append((first, index))
    workers[workers.index(worker)] = Worker(seeds, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mib", type=int, default=1536)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = list(forge.seed_files(Path(tmp)).values())
    start = time.time()
    counts = fuzz(args, seeds)
    elapsed = time.time() - start
    done = sum(counts.values())
    rows = [
        {"outcome": k, "inputs": v, "share %": 100 * v / max(done, 1),
         "target": TARGETS.get(k, "-")}
        for k, v in counts.items()
    ]  # fmt: skip
    stopped = "" if done == args.count else f" (interrupted: {done:,} of the {args.count:,} asked)"
    notes = (
        f"{done:,} inputs{stopped} (unpack and inspect each) on {args.workers} workers in "
        f"{elapsed:.0f} s ({done / elapsed:.0f} inputs/s); each worker limited to "
        f"{args.memory_mib} MiB of address space above its baseline and {args.seconds} s of CPU time an "
        "input. Inputs not ok or error are saved under tests/corpus/."
    )
    publish("fuzz", "Fuzzing the .nsk reader", rows, ["outcome", "inputs", "share %", "target"],
            notes)  # fmt: skip


if __name__ == "__main__":
    main()
