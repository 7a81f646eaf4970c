"""Quantization-aware training: it recovers what post-training quantization loses at low bits,
the trained model stays bit-exact with the integer path, "epoch" re-derives the weight formats
as the weights move (and records them) while "fixed" keeps them, and a resumed run re-derives
the formats the interrupted one had."""

import pytest
import torch

from netshrink.edits import FixedPointFormats, structural_edits
from netshrink.models import ModelSpec, build_model
from netshrink.quant import IntegerModel, QuantConfig, fixed_point_formats, qat, quantize
from netshrink.quant.qat import QatConfig, train_quantized
from netshrink.train import FitConfig, evaluate, fit

LOW = QuantConfig(weights=2, activations=3)  # where post-training quantization clearly hurts
ADAM = FitConfig(epochs=3, lr=1e-3, optimizer="adam", weight_decay=0.0)
LARGE_STEPS = FitConfig(epochs=2, lr=0.3, schedule="constant", weight_decay=0.0)


@pytest.fixture(scope="module")
def trained(mlp, digits):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    qmodel, history = train_quantized(mlp, digits, QatConfig(quant=LOW, fit=ADAM), progress=False)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())  # left as it was
    return qmodel, history


def _formats(qmodel) -> FixedPointFormats:
    current = fixed_point_formats(qmodel)
    recorded = [e for e in structural_edits(qmodel) if isinstance(e, FixedPointFormats)][-1]
    assert recorded == current  # the structural edit says what the modules do
    return current


def test_qat_recovers_what_post_training_quantization_loses(trained, mlp, digits):
    test = digits.loader("test", 512)
    float_top1 = evaluate(mlp, test).top1
    ptq_top1 = evaluate(quantize(mlp, digits, LOW), test).top1
    qmodel, history = trained
    qat_top1 = evaluate(qmodel, test).top1
    assert ptq_top1 < float_top1 - 0.04
    assert qat_top1 > ptq_top1 + 0.03
    assert qat_top1 >= float_top1 - 0.02
    assert len(history.epochs) == ADAM.epochs and not qmodel.training


def test_the_trained_model_is_bit_exact_with_the_integer_path(trained, mlp, digits):
    qmodel, _ = trained
    x, _ = next(iter(digits.loader("test", 256)))
    assert torch.equal(IntegerModel(qmodel).run(x).logits, qmodel(x).double())
    # the activation formats stay as calibrated
    assert (
        _formats(qmodel).activations == fixed_point_formats(quantize(mlp, digits, LOW)).activations
    )


def test_epoch_reestimation_follows_the_weights_and_fixed_keeps_the_formats(mlp, digits):
    quant = QuantConfig(weights=4, activations=4)
    calibrated = fixed_point_formats(quantize(mlp, digits, quant))
    config = QatConfig(quant=quant, fit=LARGE_STEPS, reestimate="fixed")
    fixed, _ = train_quantized(mlp, digits, config, progress=False)
    assert _formats(fixed) == calibrated
    moved, _ = train_quantized(
        mlp, digits, config.model_copy(update={"reestimate": "epoch"}), progress=False
    )
    formats = _formats(moved)
    # the weights grew, so their fractional lengths shrank, and the biases followed them
    assert all(formats.weights[n].frac <= s.frac for n, s in calibrated.weights.items())
    assert formats.weights != calibrated.weights and formats.biases != calibrated.biases
    assert formats.activations == calibrated.activations
    x, _ = next(iter(digits.loader("test", 128)))
    assert torch.equal(IntegerModel(moved).run(x).logits, moved(x).double())


def test_a_resumed_run_rederives_the_formats_of_the_interrupted_one(
    mlp, digits, tmp_path, monkeypatch
):
    config = QatConfig(quant=QuantConfig(weights=4, activations=4), fit=LARGE_STEPS)
    reference, _ = train_quantized(mlp, digits, config, progress=False)
    steps = len(digits.loader("train", LARGE_STEPS.batch_size))
    real_fit = qat.fit

    def interrupt(step):
        if step == steps + 2:  # two steps into the second epoch
            raise KeyboardInterrupt

    def interrupted_fit(*args, step_hooks=(), **kwargs):
        return real_fit(*args, step_hooks=[*step_hooks, interrupt], **kwargs)

    monkeypatch.setattr(qat, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_quantized(mlp, digits, config, progress=False, resume=tmp_path / "state")
    monkeypatch.setattr(qat, "fit", real_fit)
    resumed, history = train_quantized(
        mlp, digits, config, progress=False, resume=tmp_path / "state"
    )
    assert [e.epoch for e in history.epochs] == [0, 1]
    assert _formats(resumed) == _formats(reference)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_qat_at_4_4_stays_within_the_benchmark_band_on_fashion_mnist(fashion_slice):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet5"), num_classes=10, in_channels=1, input_size=28)
    fit(model, fashion_slice, FitConfig(epochs=4, lr=0.05), progress=False)
    test = fashion_slice.loader("test", 1000)
    float_top1 = evaluate(model, test).top1
    qmodel, _ = train_quantized(model, fashion_slice, QatConfig(), progress=False)
    ptq_top1 = evaluate(quantize(model, fashion_slice, QatConfig().quant), test).top1
    qat_top1 = evaluate(qmodel, test).top1
    assert qat_top1 >= float_top1 - 0.015
    assert qat_top1 >= ptq_top1
