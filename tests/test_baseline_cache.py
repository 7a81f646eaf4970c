"""The baseline cache under concurrency: a process asking for a baseline that another one is
training waits for it and loads its result, rather than training it again into the same files."""

import threading

import torch

import netshrink.baseline as baseline_module
from netshrink.baseline import cached_baseline
from netshrink.files import waiting_lock
from netshrink.models import ModelSpec
from netshrink.train import FitConfig


def test_a_waiting_lock_waits_for_its_holder_then_runs(tmp_path):
    lock, events = tmp_path / "x.lock", []
    holding, release = threading.Event(), threading.Event()

    def holder():
        with waiting_lock(lock):
            holding.set()
            release.wait(10)
            events.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)

    def waiting():
        events.append("waiting")
        release.set()

    with waiting_lock(lock, waiting):
        events.append("second")
    thread.join()
    assert events == ["waiting", "holder done", "second"]


def test_a_free_waiting_lock_does_not_wait(tmp_path):
    waited = []
    with waiting_lock(tmp_path / "sub" / "x.lock", lambda: waited.append(1)):
        pass
    assert waited == []


def test_two_callers_of_one_baseline_train_it_once(tmp_path, digits, monkeypatch):
    trainings, started = [], threading.Event()
    train_model = baseline_module.train_model

    def counted(*args, **kwargs):
        trainings.append(1)
        started.set()
        return train_model(*args, **kwargs)

    monkeypatch.setattr(baseline_module, "train_model", counted)
    spec, config = ModelSpec(name="lenet300_100"), FitConfig(epochs=1, batch_size=64)
    results = {}

    def ask(name):
        results[name] = cached_baseline(spec, digits, config, cache_dir=tmp_path, progress=False)

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert started.wait(60)  # the first one trains; the second one asks meanwhile
    ask("second")
    first.join()
    assert trainings == [1]
    (a, _, stem_a), (b, _, stem_b) = results["first"], results["second"]
    assert stem_a == stem_b
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
