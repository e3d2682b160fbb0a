"""The single review module (policy, statistics, threshold, score and flag) and its measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from biocnn.errors import CheckpointError
from biocnn.models import UNet
from biocnn.segment.config import InferenceConfig
from biocnn.segment.ood import FeatureDensity, encoder_features
from biocnn.segment.review import (
    FORMAT,
    STATS_FILE,
    Reviewer,
    ReviewPolicy,
    ReviewStats,
    conformal_quantile,
    review_threshold,
)
from biocnn.segment.uncertainty import expected_dice_error, structure_uncertainty


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


def _stats(rng, mc=(0.5, 0.1, 0.3, 0.2, 0.4), tta=(0.01, 0.02, 0.03), mc_samples=20) -> ReviewStats:
    return ReviewStats(
        FeatureDensity.fit(_features(rng)),
        {"mc": np.array(mc), "tta": np.array(tta)},
        mc_samples,
    )


def test_policy_comes_from_the_inference_config():
    inference = InferenceConfig(roi_size=[8, 8], structure_margin=1, review_quantile=0.8, ood_quantile=0.95)
    assert ReviewPolicy.from_config(inference) == ReviewPolicy(
        margin=1, review_quantile=0.8, review_threshold=None, ood_quantile=0.95
    )
    fixed = ReviewPolicy.from_config(InferenceConfig(roi_size=[8, 8], review_threshold=0.7))
    assert fixed.review_threshold == 0.7 and fixed.margin == 2
    with pytest.raises(AttributeError):
        fixed.margin = 3  # frozen: one policy per model, decided once


def test_review_threshold_sources():
    rng = np.random.default_rng(0)
    stats = _stats(rng)
    # The finite-sample quantile: the ceil((n + 1) q)-th smallest value, capped at the largest
    # (the interpolated quantile would give 0.46 and 0.34 here).
    assert conformal_quantile([0.5, 0.1, 0.3, 0.2, 0.4], 0.9) == 0.5
    assert conformal_quantile([0.5, 0.1, 0.3, 0.2, 0.4], 0.6) == 0.4
    median = ReviewPolicy(review_quantile=0.5)
    # Stored values, sampled as predict samples: exact.
    assert review_threshold(median, [stats], 1, 20, False) == (0.3, {"source": "training statistics", "matched": True})
    # --tta is judged against the TTA values (with one sample, dropout off).
    assert review_threshold(median, [stats], 1, 1, True) == (0.02, {"source": "training statistics", "matched": True})
    # Another sampling (an ensemble, other samples): the members' thresholds averaged, flagged approximate.
    other = _stats(rng, mc=(0.2, 0.4, 0.6))
    assert review_threshold(median, [stats, other], 2, 20, False) == (
        pytest.approx(0.35),
        {"source": "training statistics", "matched": False},
    )
    # The reference images measured with this sampling, and a fixed threshold, come first.
    assert review_threshold(median, [stats], 2, 20, False, [0.9, 0.7, 0.8])[0] == 0.8
    assert review_threshold(ReviewPolicy(review_threshold=0.05), [stats], 1, 20, False, [0.9]) == (
        0.05,
        {"source": "inference.review_threshold"},
    )
    # No statistics and nothing set: no threshold, no flag by doubt.
    assert review_threshold(median, [None], 1, 20, False) == (None, {"source": None})


def test_reviewer_score_and_flag():
    rng = np.random.default_rng(1)
    stats = _stats(rng)
    label = np.zeros((12, 12), int)
    label[4:8, 4:8] = 1

    def prob(p):  # foreground probability p on the structure, 1e-6 elsewhere
        p1 = np.where(label == 1, p, 1e-6)
        return np.stack([1 - p1, p1])

    familiar = stats.features.mean[None, None]  # the training features' mean: distance 0
    unfamiliar = familiar + 50 * stats.features.scale
    reviewer = Reviewer(ReviewPolicy(margin=1), [stats], threshold=0.5)
    sure, doubtful = prob(0.999), prob(0.6)
    r = reviewer.row(sure, label, familiar)
    assert r["structure_uncertainty"] == pytest.approx(structure_uncertainty(sure, label, 1))
    assert r["score"] == r["structure_uncertainty"] < 0.5 and r["flag"] == "no"
    assert r["expected_dice_error"] == pytest.approx(expected_dice_error(sure, label))
    assert r["feature_distance"] == pytest.approx(0.0, abs=1e-9) and r["ood_percentile"] < 0.5
    # Doubt at or above the threshold: flagged, and score >= threshold exactly for the flagged.
    r = reviewer.row(doubtful, label, familiar)
    assert r["structure_uncertainty"] >= 0.5 and r["flag"] == "yes" and r["score"] == r["structure_uncertainty"]
    edge = Reviewer(ReviewPolicy(margin=1), [stats], threshold=r["structure_uncertainty"])
    assert edge.row(doubtful, label, familiar)["flag"] == "yes"
    # Unfamiliar features: flagged, and lifted to the threshold (plus a hundredth of the doubt,
    # so the lifted inputs keep their order) even when the model is sure.
    r = reviewer.row(sure, label, unfamiliar)
    assert r["ood_percentile"] > 0.99 and r["flag"] == "yes"
    assert r["score"] == pytest.approx(0.5 + 0.01 * r["structure_uncertainty"])
    assert reviewer.row(prob(0.99), label, unfamiliar)["score"] > r["score"]
    # No statistics: the score is the structure uncertainty, the OOD columns and flag empty.
    bare = Reviewer(ReviewPolicy(margin=1), [None], threshold=None)
    r = bare.row(doubtful, label)
    assert r["score"] == r["structure_uncertainty"] and r["flag"] == r["feature_distance"] == r["ood_percentile"] == ""
    with pytest.raises(ValueError, match="encoder features"):
        reviewer.row(sure, label)


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


def test_review_stats_round_trip_and_other_formats_are_errors(tmp_path):
    from safetensors.numpy import save_file

    stats = _stats(np.random.default_rng(1))
    assert ReviewStats.load(tmp_path) is None  # a model trained without statistics
    stats.save(tmp_path)
    back = ReviewStats.load(tmp_path)
    for key in ("mean", "scale", "precision", "reference"):
        np.testing.assert_array_equal(getattr(back.features, key), getattr(stats.features, key))
    assert back.mc_samples == 20 and set(back.uncertainty) == {"mc", "tta"}
    np.testing.assert_array_equal(back.uncertainty["mc"], stats.uncertainty["mc"])
    # A file of another format (an earlier one, or another tool's): an error naming the file.
    path = tmp_path / STATS_FILE
    save_file({"mean": np.zeros(2)}, str(path), metadata={"format": "biocnn-segment-feature-density/3"})
    with pytest.raises(CheckpointError, match="retrain") as err:
        ReviewStats.load(tmp_path)
    assert str(path) in str(err.value) and FORMAT in str(err.value)
    path.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read review statistics") as err:
        ReviewStats.load(tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="images >= 3"):
        FeatureDensity.fit(np.zeros((2, 1, 4)))


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


@pytest.mark.parametrize("dropout", [(0.0, 0.0), (0.0, 0.5)])
def test_encoder_features_come_from_the_sampling_passes(dropout):
    # No encoder dropout: hooks on the sampling passes; encoder dropout sampled: an encoder pass
    # of its own without it. Either way the features are encoder_features of each flipped view.
    from biocnn.backbone import enable_mc_dropout
    from biocnn.segment.inference import UncertaintyPredictor, sliding_stats

    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout=dropout).eval()
    x = torch.randn(2, 1, 16, 16)
    plain = encoder_features(model, x)
    assert plain.shape == (2, 4 + 4 + 8 + 8)  # one value per channel of each of the 4 convolutions
    enable_mc_dropout(model)
    torch.testing.assert_close(encoder_features(model, x), plain)  # stages run without their dropout
    model.train()  # fresh from fit: sampled in eval mode, and its mode comes back
    predictor = UncertaintyPredictor([model], 2, mc_samples=4, mc_batch=1, tta=True, features=True)
    sliding_stats(x[0], predictor, roi_size=(16, 16), overlap=0.0)  # one window covers the image
    assert model.training and model.backbone.stages[0].convs.training
    (feats,) = predictor.take_features()
    assert feats.shape == (4, 24)
    for view, axes in enumerate(predictor.flips):
        flipped = x[:1].flip([a + 2 for a in axes]) if axes else x[:1]
        expected = encoder_features(model.eval(), flipped)[0].numpy()
        np.testing.assert_allclose(feats[view], expected, rtol=1e-5, atol=1e-6)
    # Several chunks per view record once; several windows are averaged; the record restarts.
    predictor = UncertaintyPredictor([model], 2, mc_samples=4, mc_batch=2, features=True)
    sliding_stats(torch.randn(1, 16, 32), predictor, roi_size=(16, 16), overlap=0.0)
    (feats,) = predictor.take_features()
    assert feats.shape == (1, 24)
    sliding_stats(x[0], predictor, roi_size=(16, 16), overlap=0.0)
    np.testing.assert_allclose(predictor.take_features()[0][0], plain[0].numpy(), rtol=1e-5, atol=1e-6)


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


def test_training_measures_everything_first_and_writes_config_once(tmp_path, monkeypatch):
    import copy
    import json

    import biocnn.segment.train as segment_train
    from biocnn.synthetic.malaria import write_malaria

    write_malaria(tmp_path / "data", 5, 0, size=32)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{train: {tmp_path / 'data'}, spatial_dims: 2, in_channels: 3, patch_size: [32, 32]}}\n"
        "model: {channels: [4, 8], decoder_dropout: [0.3]}\n"
        "train: {epochs: 1, batch_size: 2, progress: false, early_stopping: {monitor: val_dice, mode: max}}\n"
        "inference: {roi_size: [32, 32], mc_samples: 3, mc_batch: 3}\n"
    )
    out = tmp_path / "model"
    writes, saved_before = [], []
    real_write, real_save = segment_train.write_json, ReviewStats.save

    def write_json(path, obj):
        writes.append((Path(path).name, copy.deepcopy(obj)))
        real_write(path, obj)

    def save(self, directory):
        # What config.json holds when the statistics are stored: fit's checkpoint, no temperature yet.
        saved_before.append(json.loads((Path(directory) / "config.json").read_text())["inference"]["temperature"])
        return real_save(self, directory)

    monkeypatch.setattr(segment_train, "write_json", write_json)
    monkeypatch.setattr(ReviewStats, "save", save)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segment_train.train(cfg, out)
    finally:
        torch.set_num_threads(threads)  # later tests (bit-identical resume) depend on the count
    # One write of config.json after fit, with the temperature, built in memory (what fit wrote
    # for its checkpoints plus the temperature, not read back); the statistics stored once before it.
    assert [name for name, _ in writes] == ["config.json"]
    final = json.loads((out / "config.json").read_text())
    assert final == writes[0][1]
    temperature = final["inference"]["temperature"]
    assert temperature > 0 and saved_before == [None]
    assert json.loads((out / "metrics.json").read_text())["calibration"]["temperature"] == temperature
    assert {"model", "data", "train", "provenance", "train_cases", "val_cases"} <= set(final)
    stats = ReviewStats.load(out)
    assert len(stats.uncertainty["mc"]) == len(stats.uncertainty["tta"]) == 5 and stats.mc_samples == 3
