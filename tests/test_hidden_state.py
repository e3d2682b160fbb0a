"""Library calls leave the caller's global state and model modes as they found them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from biocnn.config import TrainConfig
from biocnn.device import torch_threads
from biocnn.errors import ConfigError
from biocnn.metrics import expected_calibration_error, roc_auc
from biocnn.models import UNet
from biocnn.predict import batched, predict
from biocnn.segment.inference import UncertaintyPredictor, case_seed, sliding_stats
from biocnn.train import Trainer, make_optimizer


def _flags():
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )


def test_trainer_sets_determinism_only_while_fitting():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0))
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, device="cpu")
    before = _flags()
    seen = []
    trainer = Trainer(model, torch.nn.functional.mse_loss, cfg, callbacks=[lambda epoch, row: seen.append(_flags())])
    assert _flags() == before  # constructing changes nothing
    trainer.fit(TensorDataset(x, y), TensorDataset(x, y))
    assert seen == [(False, True, True, True)]  # deterministic while fitting
    assert _flags() == before


def test_make_optimizer_rejects_an_unknown_name():
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = TrainConfig.model_construct(**{**TrainConfig().model_dump(), "optimizer": "adagrad"})
    with pytest.raises(ConfigError, match="train.optimizer.*adagrad"):
        make_optimizer(params, cfg)


def test_uncertainty_predictor_restores_the_callers_model_modes():
    torch.manual_seed(1)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), decoder_dropout=(0.3,))
    model.train()
    predictor = UncertaintyPredictor([model], 2, mc_samples=3)
    assert predictor.samples == [3] and all(m.training for m in model.modules())
    stats = sliding_stats(torch.randn(1, 16, 16), predictor, roi_size=(16, 16))
    assert stats.shape == (3, 16, 16) and all(m.training for m in model.modules())


def test_case_seed_gives_the_same_masks_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), decoder_dropout=(0.3,))
    predictor = UncertaintyPredictor([model], 2, mc_samples=4, mc_batch=2)
    image = torch.randn(1, 16, 16)
    state = torch.get_rng_state()
    with case_seed("case_007", torch.device("cpu")):
        first = sliding_stats(image, predictor, roi_size=(16, 16))
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(3)  # whatever the caller draws in between
    with case_seed("case_007", torch.device("cpu")):
        again = sliding_stats(image, predictor, roi_size=(16, 16))
    assert torch.equal(first, again)
    # The masks are those of the global generator seeded from the case id.
    import zlib

    torch.manual_seed(zlib.crc32(b"case_007"))
    torch.testing.assert_close(sliding_stats(image, predictor, roi_size=(16, 16)), first, rtol=0, atol=0)


def test_predict_restores_modes_and_torch_threads_restores_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)).train()
    out = predict(model, batched(torch.ones(5, 2), 2))
    assert out.shape == (5, 1) and model.training and model[1].training
    assert torch.equal(out, model.eval()(torch.ones(5, 2)))  # eval mode inside: dropout off
    n = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == n


def test_shared_metrics():
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    # Two bins: (0.25 observed 0.5) and (0.75 observed 0.5): |0.25| on every item.
    assert expected_calibration_error([0, 1, 0, 1], [0.25, 0.25, 0.75, 0.75], 2) == pytest.approx(0.25)
