import json
import math
import os
import subprocess
import sys

import pytest
import torch

from netshrink.errors import ConfigError
from netshrink.models import ModelSpec, build_model
from netshrink.train import FitConfig, evaluate, fit


def _lenet300(data):
    torch.manual_seed(0)
    c, h, _ = data.input_shape
    return build_model(ModelSpec(name="lenet300_100"), num_classes=10, in_channels=c, input_size=h)


def test_lenet5_one_epoch_on_fashion_slice_is_well_above_chance(fashion_slice):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet5"))
    history = fit(model, fashion_slice, FitConfig(epochs=1, lr=0.05, batch_size=64))
    result = evaluate(model, fashion_slice.loader("test", 256))
    # Chance is 10%; one epoch over 10000 images gave 75.6-77.7% over seeds 0-4 here.
    assert result.top1 > 0.70
    assert result.top5 >= result.top1
    assert history.final is not None and history.final.top1 > 0.70
    assert result.count == len(fashion_slice.test)


def test_fit_is_deterministic_for_a_seed(digits):
    config = FitConfig(epochs=2, lr=0.05, batch_size=64, seed=3)
    a, b = _lenet300(digits), _lenet300(digits)
    fit(a, digits, config)
    fit(b, digits, config)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_fit_leaves_frozen_parameters_alone_and_calls_step_hooks(digits):
    model = _lenet300(digits)
    model.fc1.weight.requires_grad_(False)
    frozen = model.fc1.weight.clone()
    steps = []
    config = FitConfig(epochs=2, batch_size=128)
    fit(model, digits, config, step_hooks=[steps.append])
    per_epoch = len(digits.loader("train", 128))
    assert steps == list(range(1, 2 * per_epoch + 1))
    assert torch.equal(model.fc1.weight, frozen)
    assert not torch.equal(model.fc2.weight, _lenet300(digits).fc2.weight)


def test_cosine_schedule_decays_and_constant_stays(digits):
    cosine = fit(_lenet300(digits), digits, FitConfig(epochs=4, lr=0.1))
    lrs = [e.lr for e in cosine.epochs]  # the rate each epoch started with
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), rel=0.05)
    constant = fit(_lenet300(digits), digits, FitConfig(epochs=3, lr=0.1, schedule="constant"))
    assert [e.lr for e in constant.epochs] == [0.1, 0.1, 0.1]


def test_warmup_rises_linearly_then_follows_the_schedule(digits):
    config = FitConfig(epochs=3, lr=0.1, warmup_epochs=1)
    history = fit(_lenet300(digits), digits, config)
    per_epoch = len(digits.loader("train", 128))
    lrs = [e.lr for e in history.epochs]  # the rate each epoch started with
    assert lrs[0] == pytest.approx(0.1 / (per_epoch + 1))  # the first warm-up step
    assert lrs[1] == pytest.approx(0.1)  # the cosine starts at the full rate after one epoch
    assert lrs[2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 2)))  # half its 2 epochs
    without = fit(_lenet300(digits), digits, FitConfig(epochs=3, lr=0.1))
    assert without.epochs[0].lr == 0.1


def test_warmup_is_refused_when_it_leaves_no_training():
    with pytest.raises(ValueError, match="warmup_epochs 2 leaves none of the 2 epochs"):
        FitConfig(epochs=2, warmup_epochs=2)


def test_warmup_at_its_default_leaves_the_config_dump_unchanged():
    # the caches of baselines and finished stages are keyed by these dumps
    assert "warmup_epochs" not in FitConfig().model_dump()
    assert FitConfig(warmup_epochs=0.5).model_dump()["warmup_epochs"] == 0.5


def _step_sizes(model, digits, config, steps):
    """The L2 norm of each of the first `steps` updates of `fit` (lr 1, no momentum or decay)."""
    flat = lambda: torch.cat([p.detach().flatten() for p in model.parameters()])  # noqa: E731
    last, sizes = [flat()], []

    def hook(step):
        now = flat()
        sizes.append((now - last[0]).norm().item())
        last[0] = now
        if step == steps:
            raise StopIteration

    with pytest.raises(StopIteration):
        fit(model, digits, config, step_hooks=[hook], progress=False)
    return sizes


def test_clip_grad_norm_bounds_every_step(digits):
    plain = dict(epochs=1, lr=1.0, momentum=0, weight_decay=0, schedule="constant")
    clipped = _step_sizes(_lenet300(digits), digits, FitConfig(**plain, clip_grad_norm=0.01), 5)
    assert len(clipped) == 5 and max(clipped) <= 0.01 * (1 + 1e-5)
    free = _step_sizes(_lenet300(digits), digits, FitConfig(**plain), 5)
    assert min(free) > 0.05  # the same steps unclipped: the bound above is the clipping's
    assert "clip_grad_norm" not in FitConfig().model_dump()  # cache keys unchanged at None


def test_adam_and_custom_loss_train_digits(digits):
    model = _lenet300(digits)
    calls = []

    def loss_fn(logits, y, x):
        calls.append(x.shape[0])
        return torch.nn.functional.cross_entropy(logits, y)

    fit(model, digits, FitConfig(epochs=3, optimizer="adam", lr=1e-3), loss_fn=loss_fn)
    assert sum(calls) >= len(digits.train) * 3
    assert evaluate(model, digits.loader("test", 256)).top1 > 0.85


def test_bad_configs_are_rejected(digits):
    with pytest.raises(ValueError):
        FitConfig(lr=0)
    with pytest.raises(ConfigError, match="diverged"):
        fit(_lenet300(digits), digits, FitConfig(epochs=1, lr=1e6, momentum=0))
    model = _lenet300(digits).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        fit(model, digits, FitConfig(epochs=1))


def _train_cli(tmp_path, name, launcher):
    out = tmp_path / name
    args = [
        "-m",
        "netshrink.cli",
        "train",
        "--model",
        "lenet300_100",
        "--data",
        "digits",
        "--epochs",
        "6",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--json",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NETSHRINK_PROGRESS": "0"}
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)
    # both ends of stderr: a rank's own error comes first, torchrun's summary last
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 prints
    return json.loads(lines[0])


def test_ddp_two_processes_train_to_the_same_band_as_one(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    single = _train_cli(tmp_path, "single", [sys.executable])
    ddp = _train_cli(tmp_path, "ddp", torchrun)
    assert single["test_top1"] > 0.9 and ddp["test_top1"] > 0.9
    assert abs(single["test_top1"] - ddp["test_top1"]) < 0.04
    assert (tmp_path / "ddp.safetensors").is_file()


def test_an_interrupted_fit_resumes_to_the_same_weights(digits, tmp_path):
    config = FitConfig(epochs=3, lr=0.05, batch_size=64)
    steps_per_epoch = len(digits.loader("train", 64))
    reference = _lenet300(digits)
    fit(reference, digits, config)

    def interrupt(step):
        if step == 2 * steps_per_epoch + 3:  # a few steps into the third epoch
            raise KeyboardInterrupt

    state = tmp_path / "state"
    model = _lenet300(digits)
    with pytest.raises(KeyboardInterrupt):
        fit(model, digits, config, step_hooks=[interrupt], resume=state)
    resumed = _lenet300(digits)  # a fresh process would start from a fresh model
    history = fit(resumed, digits, config, resume=state)
    assert [e.epoch for e in history.epochs] == [0, 1, 2]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(tmp_path.iterdir())  # the state is removed once the run completes
    with pytest.raises(KeyboardInterrupt):
        fit(_lenet300(digits), digits, config, step_hooks=[interrupt], resume=state)
    with pytest.raises(ConfigError, match="other settings"):
        fit(_lenet300(digits), digits, FitConfig(epochs=4, batch_size=64), resume=state)


def test_a_loss_gone_to_nan_is_a_diverged_error_naming_the_learning_rate(digits):
    from netshrink.errors import DivergedError

    with pytest.raises(DivergedError, match="lower the learning rate"):
        fit(_lenet300(digits), digits, FitConfig(epochs=1, lr=1e12, momentum=0.0))
