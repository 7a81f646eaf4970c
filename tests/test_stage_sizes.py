"""Every method of netshrink.methods.METHODS, run as a stage on a small conv + batch-norm model:
the size its stage row reports is the length of the .nsk file `pack` writes for the result, to
the byte, and the file decodes to the same outputs. A method whose output cannot be packed, or
whose reported size is not the file's, fails here."""

import pytest
import torch

from netshrink.checkpoint import CheckpointMeta
from netshrink.codec import pack, packed_bytes, unpack
from netshrink.layers import copy_model
from netshrink.measure import measure
from netshrink.methods import METHOD_NAMES, parse_stage, run_stage
from netshrink.models import ModelSpec, build_model
from netshrink.stage import StageContext
from netshrink.train import FitConfig, fit

SPEC = ModelSpec(name="vgg_small", args={"width": 0.125})  # conv + BN + linear, 8x8 inputs
ONE_EPOCH = {"epochs": 1, "lr": 0.02, "batch_size": 64}

# Each method's stage, as quick as it goes; defaults everywhere else.
QUICK = {
    "prune_magnitude": {"config": {"threshold": {"kind": "std", "ratio": 1.0}}},
    "prune_iterative": {
        "config": {
            "prune": {"threshold": {"kind": "std", "ratio": 0.7}},
            "steps": 2,
            "retrain": ONE_EPOCH,
        }
    },  # fmt: skip
    "prune_incremental": {"config": {"budget": 2.0}},
    "prune_gradual": {"config": {"final_sparsity": 0.5}, "fit": ONE_EPOCH},
    "prune_variational": {"config": {"fit": ONE_EPOCH | {"optimizer": "adam", "lr": 0.001}}},
    "prune_filters": {"config": {"amount": 0.25}},
    "sensitivity": {"sparsities": [0.5]},
    "share_kmeans": {"config": {"bits": 3}, "finetune": {"epochs": 1}},
    "share_pq": {"config": {"k": 8, "segment": 4}},
    "share_rq": {"config": {"k": 4, "segment": 4}},
    "share_binary": {"config": {"scale": "channel"}},
    "share_soft": {"config": {"epochs": 1, "batch_size": 64}},
    "factor_svd": {"config": {"rank": 4}},
    "fold_batchnorm": {},
    "quantize": {"config": {"calibration_images": 128}},
    "search_bits": {"config": {"budget": 5.0}},
    "qat": {"config": {"fit": ONE_EPOCH}},
    "distill": {"config": {"fit": ONE_EPOCH}, "prune": {"final_sparsity": 0.5}},
    "compressive": {"config": {"prune_fit": ONE_EPOCH, "layer_fit": ONE_EPOCH, "budget": 5.0}},
}


@pytest.fixture(scope="module")
def baseline(digits):
    torch.manual_seed(0)
    model = build_model(SPEC, num_classes=10, in_channels=1, input_size=8)
    fit(model, digits, FitConfig(epochs=2, lr=0.05, batch_size=64), progress=False)
    return model.eval()


def test_every_method_has_a_quick_stage():
    assert set(QUICK) == set(METHOD_NAMES)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_stage_row_size_is_the_packed_file(method, baseline, digits, tmp_path):
    ctx = StageContext(digits, baseline, FitConfig(**ONE_EPOCH), progress=False)
    stage = parse_stage({"method": method, **QUICK[method]})
    model = run_stage(copy_model(baseline), stage, ctx).eval()
    meta = CheckpointMeta(model=SPEC, input_shape=(1, 8, 8), num_classes=10)
    row = measure(model, stage=method, input_shape=(1, 8, 8), latency=False,
                  size_bytes=len(packed_bytes(model, meta=meta)))  # fmt: skip
    path = pack(model, tmp_path / "m.nsk", meta=meta)
    assert row.size_bytes == path.stat().st_size
    decoded = unpack(path).eval()
    x = next(iter(digits.loader("test", 32)))[0]
    with torch.no_grad():
        torch.testing.assert_close(decoded(x), model(x), rtol=1e-4, atol=1e-4)
