"""The user's own data and device: a torch Dataset / DataLoader / list of batches wherever
netshrink's splits are taken, `device="cpu"` given explicitly, and a CUDA request on a machine
without one refused in one line."""

import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import netshrink
from netshrink import ConfigError, LoaderSplits
from netshrink.distill import DistillConfig, distill
from netshrink.models import ModelSpec, build_model
from netshrink.quant.quantize import QuantConfig, fixed_point_formats, quantize
from netshrink.train import FitConfig, evaluate, fit


class DigitImages(Dataset):
    """What a user writes: items (image tensor [1, 8, 8], int label), their own normalisation."""

    def __init__(self, split):
        self.images = split.images.float() / 255 - 0.5
        self.labels = split.labels.tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8)


@pytest.fixture(scope="module")
def user_sets(digits):
    return DigitImages(digits.train), DigitImages(digits.val), DigitImages(digits.test)


def test_fit_and_evaluate_on_the_users_dataloaders_on_the_given_device(user_sets):
    train, val, test = user_sets
    model = _model()
    train_loader = DataLoader(train, batch_size=64, shuffle=True)
    history = fit(model, train_loader, val=DataLoader(val, 256), epochs=8, lr=0.05, device="cpu",
                  progress=False)  # fmt: skip
    assert len(history.epochs) == 8 and history.final.count == len(val)
    result = evaluate(model, DataLoader(test, 256), device="cpu")
    assert result.count == len(test) and result.top1 > 0.9  # LeNet-300-100 on digits: ~0.95


def test_a_dataset_is_batched_by_netshrink_deterministically(user_sets):
    train, val, _ = user_sets
    config = FitConfig(epochs=2, batch_size=64, seed=3)
    models = [_model(), _model()]
    for model in models:
        fit(model, LoaderSplits(train, val), config, progress=False)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    assert evaluate(models[0], val).count == len(val)  # a Dataset straight to evaluate


def test_a_plain_list_of_batches_trains_and_a_generator_is_refused(user_sets):
    train, _, _ = user_sets
    batches = list(DataLoader(train, batch_size=128))
    fit(_model(), batches, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="one-shot iterator"):
        fit(_model(), (b for b in batches), epochs=1, progress=False)
    with pytest.raises(ConfigError, match="cannot train on Tensor"):
        fit(_model(), torch.zeros(4, 1, 8, 8), epochs=1)


def test_fit_keywords_are_validated_as_the_config(user_sets):
    with pytest.raises(ConfigError, match="epochs"):
        fit(_model(), DataLoader(user_sets[0], 64), epochs=-1)
    with pytest.raises(ConfigError, match="no_such_field"):
        fit(_model(), DataLoader(user_sets[0], 64), no_such_field=1)


def test_calibration_streams_from_the_users_data(user_sets, digits):
    train, _, _ = user_sets
    model = _model().eval()
    fit(model, DataLoader(train, 64, shuffle=True), epochs=3, progress=False)
    config = QuantConfig(weights=8, activations=8, calibration_images=300)
    images = torch.stack([train[i][0] for i in range(300)])
    from_loader = quantize(model, DataLoader(train, 64), config)  # (x, y) batches, in order
    from_tensor = quantize(model, images, config)
    assert fixed_point_formats(from_loader) == fixed_point_formats(from_tensor)
    from_splits = quantize(model, LoaderSplits(train), config)  # a seeded shuffle of train
    float_top1 = evaluate(model, DataLoader(train, 256)).top1
    assert evaluate(from_splits, DataLoader(train, 256)).top1 > float_top1 - 0.02  # 8/8 bits


def test_distill_from_the_users_dataloader(user_sets):
    train, val, test = user_sets
    teacher = _model(1)
    fit(teacher, DataLoader(train, 64, shuffle=True), epochs=6, progress=False)
    student = _model(2)
    config = DistillConfig(fit=FitConfig(epochs=4, batch_size=64), temperature=2, alpha=0.5)
    data = LoaderSplits(DataLoader(train, 64, shuffle=True), DataLoader(val, 256))
    history = distill(student, teacher, data, config, device="cpu", progress=False)
    assert len(history.epochs) == 4
    assert evaluate(student, DataLoader(test, 256)).top1 > 0.85


def test_a_missing_split_and_a_bad_batch_say_what_to_give(user_sets):
    data = LoaderSplits(user_sets[0])
    assert not data.has("val") and data.input_shape == (1, 8, 8)
    with pytest.raises(ConfigError, match='no "test" data'):
        data.loader("test", 64)
    with pytest.raises(ConfigError, match=r"\(images, labels\)"):
        evaluate(_model(), [torch.zeros(2, 1, 8, 8)])


def test_device_names():
    assert netshrink.resolve_device("cpu") == torch.device("cpu")
    assert netshrink.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        netshrink.resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        netshrink.resolve_device("cuda")
    command = [sys.executable, "-m", "netshrink.cli", "train", "--data", "digits", "--epochs",
               "1", "--device", "cuda", "--out", str(tmp_path / "m")]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "no CUDA device" in out.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_a_recipe_names_its_device_and_a_typo_fails_before_any_work():
    from netshrink.recipe import parse_recipe

    text = "data: {source: digits}\nbaseline: {model: lenet300_100}\n"
    assert parse_recipe(text).device == "auto"
    assert parse_recipe(text + "device: cpu\n").device == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        parse_recipe(text + "device: gpu\n")


def test_mixed_precision_is_refused_off_cuda_and_leaves_cache_keys_alone(user_sets):
    from netshrink.baseline import BASELINES, baseline_key

    with pytest.raises(ConfigError, match="mixed_precision trains on CUDA only"):
        fit(_model(), DataLoader(user_sets[0], 64), epochs=1, mixed_precision=True, device="cpu")
    spec, data, config = BASELINES["lenet5"]
    assert "mixed_precision" not in config.model_dump()  # the default is left out of every key
    on = config.model_copy(update={"mixed_precision": True})
    assert baseline_key(spec, data, on) != baseline_key(spec, data, config)
