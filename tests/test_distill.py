"""Distillation: the soft-target loss against a hand computation, the activation-boundary loss's
zeros and gradient signs, the teacher-logit cache, and `distill` end to end on digits with a
teacher of another architecture, with gradual pruning and with a fixed-point student."""

import copy
import math

import pytest
import torch
from torch import nn

from helpers import train_on_digits
from netshrink.distill import (
    DistillConfig,
    TeacherLogits,
    ab_loss,
    boundary_agreement,
    distill,
    kd_loss,
    make_connector,
)
from netshrink.errors import ConfigError
from netshrink.layers import select_layers
from netshrink.models import ModelSpec, build_model
from netshrink.prune.gradual import GradualPruner, PruneGradualConfig
from netshrink.train import FitConfig, evaluate, fit

FAST = FitConfig(epochs=2, lr=0.05, batch_size=64)


def _teacher(digits, spec=ModelSpec(name="lenet300_100")):
    """A teacher trained on digits: LeNet-300-100, or `spec`."""
    return train_on_digits(digits, FitConfig(epochs=4, batch_size=64), spec)


TINY_VGG = ModelSpec(name="vgg_small", args={"width": 0.25, "input_size": 8})


def _conv_student():
    """A small convolutional student: another architecture than the teacher's."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 48),
        nn.ReLU(),
        nn.Linear(48, 10),
    )


def test_kd_loss_is_soft_cross_entropy_times_t_squared_by_hand():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    T = 3.0
    by_hand = 0.0
    for i in range(5):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        p, log_q = [v / sum(p) for v in p], [math.log(v / sum(q)) for v in q]
        by_hand -= sum(a * b for a, b in zip(p, log_q)) / 5
    assert float(kd_loss(s, t, T, 1.0)) == pytest.approx(T * T * by_hand, rel=1e-5)
    hard = float(nn.functional.cross_entropy(s, y))
    mixed = 0.7 * T * T * by_hand + 0.3 * hard
    assert float(kd_loss(s, t, T, 0.7, y)) == pytest.approx(mixed, rel=1e-5)


def test_kd_loss_sends_no_gradient_to_the_teacher():
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t, 2.0, 0.5, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and t.grad is None


def test_ab_loss_is_zero_when_student_agrees_beyond_the_margin():
    t = torch.tensor([[2.0, -0.5, 0.0, 3.0]])
    s = torch.tensor([[1.5, -1.2, -4.0, 1.0]])  # same sides, |s| >= margin 1
    assert float(ab_loss(s, t, margin=1.0)) == 0.0
    assert boundary_agreement(s, t) == 1.0
    # inside the margin it costs, even on the right side: 0.5 -> (0.5 - 1)^2
    assert float(ab_loss(torch.tensor([[0.5]]), torch.tensor([[2.0]]))) == pytest.approx(0.25)


def test_ab_loss_gradient_pushes_a_wrong_signed_neuron_the_right_way():
    s = torch.tensor([[-0.5, 0.7]], requires_grad=True)  # teacher: on, off
    t = torch.tensor([[1.0, -1.0]])
    loss = ab_loss(s, t, margin=1.0)
    assert float(loss.detach()) == pytest.approx(1.5**2 + 1.7**2)
    loss.backward()
    # gradient descent moves s[0] up (towards on) and s[1] down (towards off)
    assert s.grad[0, 0] < 0 < s.grad[0, 1]
    # a step takes both across the boundary to the teacher's side
    assert boundary_agreement(s.detach() - 0.5 * s.grad, t) == 1.0


def test_ab_loss_averages_over_the_batch():
    s, t = torch.zeros(4, 3), torch.ones(4, 3)
    assert float(ab_loss(s, t)) == pytest.approx(3.0)  # 3 neurons at (0 - 1)^2 each


def test_connector_bridges_channels_and_refuses_other_sizes():
    conv = make_connector("conv1", (6, 8, 8), "features.1", (32, 8, 8))
    assert conv(torch.randn(2, 6, 8, 8)).shape == (2, 32, 8, 8)
    assert isinstance(make_connector("a", (5,), "b", (5,)), nn.Identity)
    assert make_connector("fc1", (120,), "fc", (256,))(torch.randn(3, 120)).shape == (3, 256)
    with pytest.raises(ConfigError, match=r"conv2.*16x10x10.*features.4.*64x14x14"):
        make_connector("conv2", (16, 10, 10), "features.4", (64, 14, 14))


def test_config_checks_the_pairs():
    assert DistillConfig(ab_pairs=("a.1:b",)).pairs == [("a.1", "b")]
    with pytest.raises(ValueError, match="student_layer:teacher_layer"):
        DistillConfig(ab_pairs=("conv1",))
    with pytest.raises(ValueError, match="ab_epochs"):
        DistillConfig(ab_pairs=("a:b",), ab_epochs=0)


def test_teacher_logit_cache_hits_training_images_and_computes_the_rest(digits):
    teacher = _teacher(digits)
    cache = TeacherLogits(teacher, digits)
    assert len(cache.keys) == len(digits.train)
    x, _ = next(iter(digits.loader("train", 64)))  # shuffled: another order than the cache's
    with torch.no_grad():
        expected = teacher(x)
    hit, _ = cache._lookup(x)
    assert bool(hit.all())
    assert torch.allclose(cache(x), expected, atol=1e-5)
    moved = x.clone()
    moved[:5] += 0.25  # not training images any more: they go through the teacher
    hit, _ = cache._lookup(moved)
    assert hit.tolist() == [False] * 5 + [True] * (len(x) - 5)
    with torch.no_grad():
        assert torch.allclose(cache(moved), teacher(moved), atol=1e-5)


def test_distill_from_another_architecture_with_ab_and_gradual_pruning(digits):
    teacher = _teacher(digits, TINY_VGG)  # conv 8-8-16-16-32-32, fc 64: not the student's
    before = copy.deepcopy(teacher.state_dict())
    student = _conv_student()
    keys = set(student.state_dict())
    pruner = GradualPruner(student, PruneGradualConfig(final_sparsity=0.5, steps=4, interval=5))
    config = DistillConfig(fit=FAST, ab_pairs=("0:features.1", "3:classifier.1"), ab_epochs=1)
    history = distill(student, teacher, digits, config, step_hooks=[pruner], progress=False)
    assert len(history.epochs) == 3  # one AB epoch, then two of soft targets
    assert [r.epoch for r in history.epochs] == [0, 1, 2]
    assert evaluate(student, digits.loader("test", 256)).top1 > 0.8
    assert pruner.sparsity == pytest.approx(0.5)
    for _, layer in select_layers(student):
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    # connectors are dropped: the student's own tensors only; the teacher is untouched
    assert {k.split(".")[0] for k in student.state_dict()} == {k.split(".")[0] for k in keys}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_ab_stage_teaches_the_teachers_boundaries(digits):
    from netshrink.distill import capture

    teacher = _teacher(digits)
    torch.manual_seed(5)
    student = build_model(
        ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8
    )
    x, _ = next(iter(digits.loader("val", 256)))

    def agreement():  # same shapes: no connector, so the student's own units are compared
        with torch.no_grad(), capture(student, ["fc1"]) as s, capture(teacher, ["fc1"]) as t:
            student(x), teacher(x)
        return boundary_agreement(s["fc1"], t["fc1"])

    start = agreement()
    stage = FitConfig(epochs=0, lr=0.05, batch_size=64)  # the AB stage alone
    config = DistillConfig(fit=stage, ab_pairs=("fc1:fc1",), ab_weight=0.1)
    distill(student, teacher, digits, config, progress=False)
    # a random student agrees on about half of the units; two AB epochs bring it near 92%
    assert start < 0.6 and agreement() > 0.88


def test_ab_stage_says_when_it_lowers_the_agreement(digits, capsys):
    # a student that starts as the teacher agrees already; a rate far too high makes the AB
    # loss diverge (the DenseNet's collapse in bench/ablate_shin_oh.py): the stage says so
    teacher = _teacher(digits)
    stage = FitConfig(epochs=0, lr=0.05, batch_size=64)
    for ab_lr, fell in ((1e-4, False), (20.0, True)):
        student = copy.deepcopy(teacher)
        config = DistillConfig(fit=stage, ab_pairs=("fc1:fc1",), ab_epochs=1, ab_lr=ab_lr)
        capsys.readouterr()
        distill(student, teacher, digits, config, progress=True)
        out = " ".join(capsys.readouterr().out.split())
        assert "AB stage: boundary agreement with the teacher 100.0% ->" in out
        assert ("it fell: ab_lr 20 may be too high" in out) is fell


def test_shape_mismatch_names_both_layers(digits):
    teacher = build_model(TINY_VGG, num_classes=10, in_channels=1, input_size=8)
    config = DistillConfig(fit=FAST, ab_pairs=("0:features.8",), ab_epochs=1)
    with pytest.raises(ConfigError, match=r"student's 0 gives 4x8x8.*features.8 gives 16x4x4"):
        distill(_conv_student(), teacher, digits, config, progress=False)
    with pytest.raises(ConfigError, match="no layer named conv9"):
        distill(
            _conv_student(),
            teacher,
            digits,
            DistillConfig(fit=FAST, ab_pairs=("conv9:features.1",)),
            progress=False,
        )


def test_fixed_point_student_distills_as_qat(digits):
    from netshrink.quant import QuantConfig, is_quantized, quantize

    teacher = _teacher(digits)
    student = build_model(
        ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8
    )
    torch.manual_seed(2)
    fit(student, digits, FitConfig(epochs=2, batch_size=64), progress=False)
    qstudent = quantize(student, digits, QuantConfig(weights=6, activations=8))
    ptq = evaluate(qstudent, digits.loader("test", 256)).top1
    config = DistillConfig(fit=FitConfig(epochs=2, lr=0.01, batch_size=64), alpha=0.9)
    distill(qstudent, teacher, digits, config, progress=False)
    assert is_quantized(qstudent)
    assert evaluate(qstudent, digits.loader("test", 256)).top1 >= ptq - 0.02
    weight = qstudent.get_submodule("fc1").weight
    fmt = qstudent.get_submodule("fc1").parametrizations.weight[0].fmt
    assert torch.equal(weight, torch.round(weight * 2**fmt.frac) / 2**fmt.frac)  # on its grid
