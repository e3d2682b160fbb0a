"""The image-level review score: structure uncertainty, Dice-error estimate, feature distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from biocnn.errors import CheckpointError
from biocnn.models import UNet
from biocnn.segment.config import InferenceConfig
from biocnn.segment.ood import (
    FEATURE_STATS,
    FeatureDensity,
    combined_zscore,
    encoder_features,
    image_features,
    noise_levels,
)
from biocnn.segment.uncertainty import expected_dice_error, image_score, structure_uncertainty, threshold_from_training


def test_expected_dice_error_known_cases():
    label = np.zeros((6, 6), int)
    label[1:3, 1:4] = 1
    confident = np.stack([label == 0, label == 1]).astype(float)
    assert expected_dice_error(confident, label) == 0.0
    # Probability 0.6 on the 6 labelled pixels and 0.1 on the 30 others:
    # soft Dice = (2 * 3.6 + 1) / (3.6 + 3 + 6 + 1).
    p1 = np.where(label == 1, 0.6, 0.1)
    prob = np.stack([1 - p1, p1])
    assert expected_dice_error(prob, label) == pytest.approx(1 - 8.2 / 13.6)
    # Nothing predicted and nothing probable: no error expected.
    empty = np.zeros((6, 6), int)
    assert expected_dice_error(np.stack([np.ones((6, 6)), np.zeros((6, 6))]), empty) == 0.0


def _binary_entropy(p):
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_structure_uncertainty_counts_the_structure_and_its_rim_only():
    label = np.zeros((9, 9), int)
    label[4, 4] = 1
    p1 = np.full((9, 9), 0.5)  # maximal doubt everywhere
    prob = np.stack([1 - p1, p1])
    h = _binary_entropy(0.5)
    # Margin 1 dilates the pixel to a cross of 5 pixels: 5 h over (1 + 1) structure voxels.
    assert structure_uncertainty(prob, label, margin=1) == pytest.approx(5 * h / 2)
    assert structure_uncertainty(prob, label, margin=0) == pytest.approx(h / 2)
    # Doubt far from the structure does not count.
    far = np.full((9, 9), 1e-9)
    far[0, :] = 0.5
    assert structure_uncertainty(np.stack([1 - far, far]), label, margin=2) == pytest.approx(0, abs=1e-5)
    assert structure_uncertainty(prob, np.zeros((9, 9), int)) == 0.0


def test_structure_uncertainty_is_per_class_and_weighs_small_classes_like_large_ones():
    # Class 1: a 2 x 2 core; class 2: a 6 x 6 ring around it (32 pixels); 12 x 12 image.
    label = np.zeros((12, 12), int)
    label[3:9, 3:9] = 2
    label[5:7, 5:7] = 1
    prob = np.zeros((3, 12, 12))
    prob[0] = 1.0
    for c in (1, 2):
        prob[:, label == c] = 0.0
        prob[c, label == c] = 1.0
    # The core is doubted (p = 0.7 of being core, 0.3 of ring), nothing else is.
    prob[1, label == 1], prob[2, label == 1] = 0.7, 0.3
    eps = 1e-8
    h = _binary_entropy(0.7)
    # Class 1: 4 doubted pixels over 4 + 1; class 2: its p_2 = 0.3 on the core, which lies in
    # its dilated region: 4 h over 32 + 1. The mean of the two, not 8 h over (36 + 1) pooled.
    expected = (4 * h / 5 + 4 * h / 33) / 2
    assert structure_uncertainty(prob, label, margin=1) == pytest.approx(expected, rel=1e-4)
    # Doubt between two classes does not count against a third: a background pixel torn
    # between classes 1 and 2 in a three-class problem with a fourth, untouched class 3.
    prob4 = np.zeros((4, 12, 12))
    prob4[:3] = prob
    lab4 = label.copy()
    lab4[0:2, 8:10] = 3
    prob4[:, 0:2, 8:10] = 0.0
    prob4[3, 0:2, 8:10] = 1.0
    before = structure_uncertainty(prob4, lab4, margin=1)
    prob4[:, 11, 0] = [0.0, 0.5, 0.5, 0.0]  # far from every structure, in no dilated region
    assert structure_uncertainty(prob4, lab4, margin=1) == pytest.approx(before, abs=eps)
    prob4[:, 2, 8] = [0.0, 0.5, 0.5, 0.0]  # next to class 2 and class 3, doubt only 1 vs 2
    third = structure_uncertainty(prob4, lab4, margin=1)
    # Class 3 is unchanged (p_3 = 0 there); only class 2's term (and 1's, not in reach) moves.
    assert third - before == pytest.approx(_binary_entropy(0.5) / (32 + 1) / 3, rel=1e-4)
    # One foreground class: the predictive entropy over the dilated structure per structure
    # voxel (with two classes, binary entropy is the full entropy).
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.01, 0.99, (12, 12))
    two = np.stack([1 - p1, p1])
    fg = p1 > 0.6
    from scipy import ndimage

    region = ndimage.binary_dilation(fg, iterations=2)
    ent = -(two * np.log(two)).sum(0)
    assert structure_uncertainty(two, fg.astype(int), margin=2) == pytest.approx(ent[region].sum() / (fg.sum() + 1))


def test_review_score_and_threshold():
    # The review score: an OOD input scores at least the review threshold, more if more doubtful.
    assert image_score(0.3) == 0.3
    assert image_score(0.3, ood=True, review_threshold=0.5) == pytest.approx(0.503)
    assert image_score(0.7, ood=True, review_threshold=0.5) == 0.7
    # OOD inputs lifted to the floor keep their order (no tie), and stay below an ordinary
    # input that is more doubtful than the threshold by more than the tie-break.
    lifted = [image_score(u, ood=True, review_threshold=0.5) for u in (0.1, 0.2, 0.4)]
    assert 0.5 < lifted[0] < lifted[1] < lifted[2] < image_score(0.51, review_threshold=0.5)
    assert image_score(0.3, ood=False, review_threshold=0.5) == 0.3
    assert image_score(0.3, ood=True) == 0.3  # no threshold known
    # The review threshold: a quantile of the training images' values, or the configured one.
    info = {"training_structure_uncertainty": [0.5, 0.1, 0.3, 0.2, 0.4]}
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8], review_quantile=0.5), info) == pytest.approx(0.3)
    # The finite-sample quantile: the ceil((n + 1) q)-th smallest value, capped at the largest
    # (the interpolated quantile would give 0.46 and 0.34 here).
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8], review_quantile=0.9), info) == pytest.approx(0.5)
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8], review_quantile=0.6), info) == pytest.approx(0.4)
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8], review_threshold=0.7), info) == 0.7
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8]), {}) is None
    info["training_structure_uncertainty_tta"] = [0.01, 0.02, 0.03]
    median = InferenceConfig(roi_size=[8, 8], review_quantile=0.5)
    assert threshold_from_training(median, info, tta=True) == pytest.approx(0.02)
    assert threshold_from_training(InferenceConfig(roi_size=[8, 8], review_quantile=0.5), info) == pytest.approx(0.3)


def _features(rng, n=12, views=2, d=5):
    base = rng.normal(0, 1, (n, 1, d)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0])
    return base + rng.normal(0, 0.05, (n, views, d))


def test_mahalanobis_distance_matches_a_hand_computation():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    feats = _features(rng)
    density = FeatureDensity.fit(feats, folds=len(feats))
    flat = feats.reshape(-1, feats.shape[-1])
    mean, std = flat.mean(0), flat.std(0)
    cov = LedoitWolf().fit((flat - mean) / std).covariance_
    x = rng.normal(0, 1, 5)
    z = (x - mean) / std
    assert density.distance(x) == pytest.approx(float(np.sqrt(z @ np.linalg.inv(cov) @ z)), rel=1e-6)
    # Reference distances are cross-fitted: image 3 measured against a fit without it.
    alone = FeatureDensity.fit(np.delete(feats, 3, 0), folds=3)
    assert np.isclose(density.reference, alone.distance(feats[3, 0]), rtol=1e-9).sum() == 1
    # In-sample distances would be smaller than the cross-fitted ones.
    assert np.median(density.distance(feats[:, 0])) < np.median(density.reference)
    # Percentile from a log-normal fitted robustly (median, MAD) to the reference distances.
    logs = np.log(density.reference)
    median = np.median(logs)
    spread = 1.4826 * np.median(np.abs(logs - median))
    assert density.percentile(np.exp(median)) == pytest.approx(0.5)
    assert density.zscore(np.exp(median + 2 * spread)) == pytest.approx(2.0)
    assert density.percentile(np.exp(median + 2.326348 * spread)) == pytest.approx(0.99, abs=1e-6)
    # One far-off training image does not move the bar much (unlike the largest distance).
    odd = FeatureDensity(
        density.mean,
        density.scale,
        density.precision,
        np.sort(np.append(density.reference, 100 * density.reference.max())),
    )
    assert odd.percentile(density.reference.max() * 1.5) > 0.9
    # A far group of training images (3 of 24) is not called unfamiliar: the spread widens so
    # that only the farthest lies beyond the cut (the robust spread alone puts all 3 there).
    logs = np.concatenate([np.random.default_rng(5).normal(0, 0.3, 21), [2.0, 2.1, 2.2]])
    tail = FeatureDensity(density.mean, density.scale, density.precision, np.sort(np.exp(logs)))
    median = np.median(logs)
    assert np.sum((logs - median) / (1.4826 * np.median(np.abs(logs - median))) > norm.ppf(0.99)) == 3
    assert tail.percentile(np.exp(2.1)) == pytest.approx(0.99)  # the second-farthest sits on the cut
    assert tail.percentile(np.exp(2.0)) < 0.99 < tail.percentile(np.exp(2.2))
    assert tail.percentile(np.exp(2.1), quantile=0.9) == pytest.approx(0.9)


def test_feature_stats_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    density = FeatureDensity.fit(_features(rng))
    density.info = {"review_threshold": 0.4}
    assert FeatureDensity.load(tmp_path) is None  # a model trained without statistics
    density.save(tmp_path)
    back = FeatureDensity.load(tmp_path)
    for key in ("mean", "scale", "precision", "reference"):
        np.testing.assert_array_equal(getattr(back, key), getattr(density, key))
    assert back.info == {"review_threshold": 0.4}
    (tmp_path / FEATURE_STATS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read feature statistics"):
        FeatureDensity.load(tmp_path)
    with pytest.raises(ValueError, match="images >= 3"):
        FeatureDensity.fit(np.zeros((2, 1, 4)))


def test_noise_density_round_trip(tmp_path):
    # The noise levels' density travels in the same file; files without one load as before.
    rng = np.random.default_rng(2)
    density = FeatureDensity.fit(_features(rng))
    density.save(tmp_path)
    assert FeatureDensity.load(tmp_path).noise is None
    density.noise = FeatureDensity.fit(_features(rng, d=5)[:, :1])
    density.save(tmp_path)
    back = FeatureDensity.load(tmp_path)
    for key in ("mean", "scale", "precision", "reference"):
        np.testing.assert_array_equal(getattr(back.noise, key), getattr(density.noise, key))
        np.testing.assert_array_equal(getattr(back, key), getattr(density, key))


def test_noise_levels_estimate_the_added_noise():
    # A smooth two-channel image plus white noise of known sigma per channel: the estimate
    # recovers log sigma (the smooth anatomy barely reaches the finest wavelet scale).
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128] / 128.0
    smooth = np.stack([np.sin(3 * xx) + yy, np.cos(2 * yy) * xx])
    sigma = np.array([0.05, 0.2])
    levels = noise_levels(torch.as_tensor(smooth + rng.normal(0, 1, smooth.shape) * sigma[:, None, None]))
    assert levels.shape == (2,)
    np.testing.assert_allclose(levels, np.log(sigma), atol=0.1)
    # 3D works the same way.
    vol = rng.normal(0, 0.1, (1, 24, 24, 24))
    assert noise_levels(vol)[0] == pytest.approx(np.log(0.1), abs=0.1)


def test_combined_zscore_keeps_the_false_flag_rate():
    # One check: unchanged. Several: the largest, corrected so that Phi(z) = Phi(max)^k.
    assert combined_zscore([1.7]) == 1.7
    z = combined_zscore([0.3, 2.0, -1.0])
    assert norm.cdf(z) == pytest.approx(norm.cdf(2.0) ** 3)
    assert 1.0 < z < 2.0
    # Far-off inputs keep a large, finite z-score (Phi(40)^2 rounds to 1 in floating point).
    assert 39 < combined_zscore([40.0, 0.0]) < 41
    # In-distribution inputs with two independent checks: about 1 % pass the 0.99 cut, where
    # taking the larger z-score uncorrected would flag about 2 %.
    draws = np.random.default_rng(4).normal(size=(200_000, 2))
    joined = np.array([combined_zscore(pair) for pair in draws[:20_000]])
    assert np.mean(joined > norm.ppf(0.99)) == pytest.approx(0.01, abs=0.003)
    assert np.mean(draws.max(1) > norm.ppf(0.99)) == pytest.approx(0.02, abs=0.002)


def test_encoder_features_see_the_scale_that_instance_norm_removes():
    # Doubling the input doubles the first (bias-free) convolution's response: its log spread
    # rises by log 2; the norm layer then removes the scale, so every later convolution sees
    # the same input. Statistics taken after the norm would not change at all.
    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), norm="instance").eval()
    x = torch.randn(1, 2, 12, 12, 12)
    shift = (encoder_features(model, 2 * x) - encoder_features(model, x))[0]
    torch.testing.assert_close(shift[:4], torch.full((4,), float(np.log(2))), rtol=0, atol=1e-4)
    torch.testing.assert_close(shift[4:], torch.zeros(4 + 8 + 8), rtol=0, atol=1e-3)


@pytest.mark.parametrize("version", [1, 2])
def test_older_feature_statistics_are_ignored_with_a_warning(tmp_path, caplog, version):
    from safetensors.numpy import save_file

    save_file(
        {"mean": np.zeros(2)},
        str(tmp_path / FEATURE_STATS),
        metadata={"format": f"biocnn-segment-feature-density/{version}", "info": "{}"},
    )
    with caplog.at_level("WARNING"):
        assert FeatureDensity.load(tmp_path) is None
    assert "older format" in caplog.text and str(tmp_path) in caplog.text


def test_encoder_features_are_deterministic_under_mc_dropout_and_cover_windows():
    from biocnn.backbone import enable_mc_dropout

    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout=(0.0, 0.5)).eval()
    x = torch.randn(2, 1, 16, 16)
    plain = encoder_features(model, x)
    assert plain.shape == (2, 4 + 4 + 8 + 8)  # one value per channel of each of the 4 convolutions
    enable_mc_dropout(model)
    torch.testing.assert_close(encoder_features(model, x), plain)
    # Image features: (models, views, D); one window covering the image equals a direct pass.
    feats = image_features([model], x[0], [(), (0,)], roi_size=(16, 16), overlap=0.0)
    assert feats.shape == (1, 2, 24)
    np.testing.assert_allclose(feats[0, 0], plain[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[0, 1], encoder_features(model, x[:1].flip(2))[0].numpy(), rtol=1e-5, atol=1e-6)
    # A model in train mode (fresh from fit) gets eval-mode features and keeps its mode.
    model.train()
    again = image_features([model], x[0], [()], roi_size=(16, 16), overlap=0.0)
    assert model.training and model.backbone.stages[0].convs.training
    np.testing.assert_allclose(again[0, 0], plain[0].numpy(), rtol=1e-5, atol=1e-6)


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_labels():
    from biocnn.segment.temperature import calibrate, fit_temperature, negative_log_likelihood

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=gen) * 3
    # Labels drawn from softmax(logits / 0.4): the network is under-confident by a factor 2.5.
    labels = torch.multinomial(torch.softmax(logits / 0.4, 1), 1, generator=gen)[:, 0]
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(0.4, rel=0.05)
    assert negative_log_likelihood(logits, labels, t) < negative_log_likelihood(logits, labels)
    report = calibrate(logits, labels)
    assert report["temperature"] == pytest.approx(t)
    assert report["val_ece_after"] < report["val_ece_before"] and report["voxels"] == 20000
    # Over-confident logits give T > 1; the label map (argmax) never changes.
    labels_hot = torch.multinomial(torch.softmax(logits / 2.0, 1), 1, generator=gen)[:, 0]
    assert fit_temperature(logits, labels_hot) == pytest.approx(2.0, rel=0.05)
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))
