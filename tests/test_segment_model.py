"""U-Net on both dims, uncertainty maths on known cases, fast MC sampling, sliding windows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from biocnn.backbone import enable_mc_dropout
from biocnn.metrics import expected_calibration_error, roc_auc
from biocnn.models import UNet
from biocnn.segment.inference import UncertaintyPredictor, flip_sets, sliding_stats
from biocnn.segment.sampling import naive_samples, unet_samples
from biocnn.segment.uncertainty import SampleAccumulator, entropy, maps_from_stats


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine is shared: OpenMP threads spinning against other jobs make tiny models
    # 50x slower, so these tests run single-threaded.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dims,shape", [(2, (37, 50)), (3, (17, 20, 12))])
def test_unet_both_dims_odd_sizes(dims, shape):
    torch.manual_seed(0)
    model = UNet(spatial_dims=dims, in_channels=2, out_channels=3, channels=(4, 8, 16), decoder_dropout=(0.0, 0.5))
    out = model.eval()(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)


def test_entropy_and_mutual_information_known_case():
    # Two confident samples that disagree: predictive entropy ln 2, expected entropy 0, MI ln 2.
    acc = SampleAccumulator()
    acc.add_probs(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])[..., None])  # (n=2, B=1, C=2, 1 voxel)
    maps = maps_from_stats(acc.stats())
    assert maps["entropy"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert maps["mutual_info"].item() == pytest.approx(math.log(2), abs=1e-5)
    # Two identical uncertain samples: all aleatoric, MI 0.
    acc = SampleAccumulator()
    acc.add_probs(torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])[..., None])
    maps = maps_from_stats(acc.stats())
    assert maps["entropy"].item() == pytest.approx(math.log(2), abs=1e-5)
    assert maps["mutual_info"].item() == pytest.approx(0.0, abs=1e-6)
    # A three-class case by hand: samples (0.7, 0.2, 0.1) and (0.1, 0.2, 0.7).
    s1, s2 = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.2, 0.7])
    mean = (s1 + s2) / 2

    def h(p):
        return -(p * np.log(p)).sum()

    acc = SampleAccumulator()
    acc.add_probs(torch.tensor(np.stack([s1, s2])[:, None, :, None], dtype=torch.float32))
    maps = maps_from_stats(acc.stats())
    assert maps["entropy"].item() == pytest.approx(h(mean), abs=1e-5)
    assert maps["mutual_info"].item() == pytest.approx(h(mean) - (h(s1) + h(s2)) / 2, abs=1e-5)
    assert maps["label"].item() in (0, 2)


def test_streaming_chunks_equal_one_batch():
    logits = torch.randn(6, 2, 3, 5, 5)
    whole, parts = SampleAccumulator(), SampleAccumulator()
    whole.add(logits)
    for chunk in logits.split(4):
        parts.add(chunk)
    torch.testing.assert_close(whole.stats(), parts.stats())
    p = torch.softmax(logits, 2).mean(0)
    torch.testing.assert_close(whole.stats()[:, :3], p)
    torch.testing.assert_close(whole.stats()[:, 3], entropy(torch.softmax(logits, 2), 2).mean(0))


@pytest.mark.parametrize("enc,dec", [((0, 0, 0.5), (0.0, 0.0)), ((0, 0, 0), (0.0, 0.5)), ((0, 0, 0), (0.5, 0.0))])
def test_fast_sampling_matches_naive(enc, dec):
    torch.manual_seed(1)
    # Instance norm: an untrained net with batch norm in eval mode has near-zero deep features.
    model = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(4, 8, 16),
        norm="instance",
        dropout=enc,
        decoder_dropout=dec,
    )
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    # Without active dropout every fast sample is the deterministic output.
    torch.testing.assert_close(unet_samples(model, x, 3), model(x).expand(3, -1, -1, -1, -1))
    enable_mc_dropout(model)
    fast, naive = unet_samples(model, x, 400), naive_samples(model, x, 400)
    assert fast.shape == naive.shape == (400, 2, 2, 16, 16)
    assert fast.std(0).mean() > 1e-3  # samples do differ
    # Same distribution: means and spreads agree within Monte Carlo error.
    torch.testing.assert_close(fast.mean(0), naive.mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(fast.std(0).mean(), naive.std(0).mean(), atol=0.05, rtol=0.1)


def test_sliding_window_predictor_tta_and_ensemble():
    torch.manual_seed(2)
    models = [
        UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), decoder_dropout=(0.3,)) for _ in range(2)
    ]
    image = torch.randn(1, 40, 29)
    assert flip_sets(2, True) == [(), (0,), (1,), (0, 1)]
    for tta in (False, True):
        pred = UncertaintyPredictor(models, 2, mc_samples=4, mc_batch=3, tta=tta)
        stats = sliding_stats(image, pred, roi_size=(16, 16), sw_batch_size=2, overlap=0.5)
        assert stats.shape == (4, 40, 29)
        torch.testing.assert_close(stats[:3].sum(0), torch.ones(40, 29), atol=1e-4, rtol=0)
        maps = maps_from_stats(stats[None])
        assert (maps["mutual_info"] >= 0).all() and (maps["mutual_info"] <= maps["entropy"] + 1e-6).all()
        assert maps["mutual_info"].max() > 0
    # Deterministic single model, no TTA: the stats are the softmax of one whole-image pass
    # when the window covers the image.
    det = UncertaintyPredictor(models[:1], 2, mc_samples=1)
    stats = sliding_stats(image, det, roi_size=(40, 29), sw_batch_size=1, overlap=0.0)
    torch.testing.assert_close(stats[:3], torch.softmax(models[0].eval()(image[None]), 1)[0], atol=1e-5, rtol=0)
    assert maps_from_stats(stats[None])["mutual_info"].max() < 1e-5
    # A calibration temperature divides the logits before the softmax, per model.
    cooled = UncertaintyPredictor(models[:1], 2, mc_samples=1, temperatures=[0.5])
    stats = sliding_stats(image, cooled, roi_size=(40, 29), sw_batch_size=1, overlap=0.0)
    torch.testing.assert_close(stats[:3], torch.softmax(models[0].eval()(image[None]) / 0.5, 1)[0], atol=1e-5, rtol=0)
    # A model trained before calibration existed (no temperature) is taken as it is.
    assert UncertaintyPredictor(models[:1], 2, mc_samples=1, temperatures=[None]).temperatures == [1.0]
    with pytest.raises(ValueError, match="temperatures"):
        UncertaintyPredictor(models, 2, mc_samples=1, temperatures=[0.5])


@pytest.mark.parametrize("dims,shape", [(2, (12, 10)), (3, (8, 6, 4))])
def test_tta_averages_the_unflipped_views_of_every_flip(dims, shape):
    # A U-Net with random weights is not flip-equivariant, so the TTA average differs from one
    # plain pass, and from averaging views that were not flipped back.
    torch.manual_seed(4)
    model = UNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=(4, 8), norm="instance").eval()
    x = torch.randn(2, 1, *shape)
    views = []
    for r in range(dims + 1):
        for axes in itertools.combinations(range(2, 2 + dims), r):
            views.append(torch.softmax(model(x.flip(axes)).flip(axes), 1) if axes else torch.softmax(model(x), 1))
    assert len(views) == 2**dims
    p = torch.stack(views)
    expected = torch.cat([p.mean(0), entropy(p, 2).mean(0)[:, None]], 1)
    got = UncertaintyPredictor([model], dims, mc_samples=1, tta=True)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    plain = UncertaintyPredictor([model], dims, mc_samples=1, tta=False)(x)
    torch.testing.assert_close(plain[:, :3], views[0], atol=1e-5, rtol=0)
    assert (got[:, :3] - plain[:, :3]).abs().max() > 1e-2  # the views do differ


def test_metrics_on_known_values():
    assert roc_auc(np.array([False, False, True, True]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0.95, 0.95]), 15) == pytest.approx(0.05)
