"""netshrink.deploy: the artifacts a model deploys as, each measured and checked on the test
split; a float model cannot be asked for C or int8 code."""

import pytest

from helpers import train_on_digits
from netshrink.deploy import CheckImages, ExportConfig, export_artifacts
from netshrink.errors import ConfigError
from netshrink.quant import QuantConfig, quantize
from netshrink.train import FitConfig


@pytest.fixture(scope="module")
def trained(digits):
    return train_on_digits(digits, FitConfig(epochs=3, batch_size=64, lr=0.05))


def test_a_float_model_deploys_as_fp32_onnx_only(trained, digits, tmp_path):
    for wanted in ({"c": True}, {"int8": True}):
        with pytest.raises(ConfigError, match="need a fixed-point model"):
            export_artifacts(trained, tmp_path, ExportConfig(**wanted), digits)
    (row,) = export_artifacts(trained, tmp_path, ExportConfig(onnx=True, check=100), digits)
    assert row.artifact == "fp32 ONNX" and row.bytes == (tmp_path / "model.onnx").stat().st_size
    assert row.check.startswith("top-1 agreement with PyTorch 100.00%") and row.agreement == 1.0
    assert row.images_per_second > 0 and 0.8 < row.top1 <= 1.0


def test_check_images_hold_the_first_n_test_images_in_batches(digits):
    checks = CheckImages(digits, 300, batch_size=128)
    sizes = [len(x) for x, _ in checks]
    assert sizes == [128, 128, 44] and len(checks) == 300
    assert [len(x) for x in checks.images()] == sizes  # re-iterable, images only
    assert len(CheckImages(digits)) == len(digits.test)


def test_the_int8_file_checks_itself_against_the_integer_path(trained, digits, tmp_path):
    qmodel = quantize(trained, digits, QuantConfig(ties="even"))
    (row,) = export_artifacts(qmodel, tmp_path, ExportConfig(int8=True, check=200), digits)
    assert row.check == "top-1 agreement with the integer path 100.00% of 200 images"
    assert row.agreement == 1.0
