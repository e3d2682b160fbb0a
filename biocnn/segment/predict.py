"""``biocnn segment predict``: label map, probabilities, entropy and mutual information.

Per input (``<id>`` = case id):

* 2D: ``<id>_label.png``, ``<id>_prob.tif`` (C, H, W float32), ``<id>_entropy.tif``,
  ``<id>_mutual_info.tif``, ``<id>_overlay.png``;
* 3D: ``<id>_label.nii.gz``, ``<id>_prob.nii.gz`` (X, Y, Z, C), ``<id>_entropy.nii.gz``,
  ``<id>_mutual_info.nii.gz`` (all with the input's affine and header), ``<id>_overlay.png``.

Plus ``uncertainty.csv`` (one row per input, see :data:`CSV_FIELDS`) and ``predict.json``
(settings, the label values, failures). A bad input is reported and the others go on; inputs
seen = rows written + failures.

``uncertainty.csv`` columns (:mod:`biocnn.segment.review`): ``score`` is the review score (sort
by it, largest first): the structure uncertainty, raised to at least the review threshold for
out-of-distribution inputs; ``flag`` is ``yes`` when the input's ``ood_percentile`` exceeds
``inference.ood_quantile`` (0.99) or its structure uncertainty reaches the review threshold
(``inference.review_threshold``, default: the ``inference.review_quantile`` (0.9) of the
training images' values, measured at the end of training, or with this prediction's own
sampling on the ``--reference`` images); then the components ``structure_uncertainty``,
``expected_dice_error``, ``feature_distance`` (Mahalanobis, averaged over ensemble members and
TTA flips), ``ood_percentile`` (estimated share of training-like images nearer), and
``mean_entropy``, ``mean_mutual_info``, ``foreground_fraction``, ``label_file``.
For models trained without review statistics the OOD columns are empty and the score is the
structure uncertainty alone.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biocnn.checkpoint import load_model
from biocnn.device import select_device
from biocnn.errors import BiocnnError, CheckpointError, InputError
from biocnn.io.atomic import write_json, write_text
from biocnn.io.paths import ensure_writable_dir, inside, safe_component
from biocnn.segment.config import DataConfig, InferenceConfig
from biocnn.segment.data import Case, find_cases, index_to_label, load_case, preprocessing
from biocnn.segment.figures import overlay_png, pick_slice
from biocnn.segment.inference import UncertaintyPredictor, case_seed, sliding_stats
from biocnn.segment.review import Reviewer, ReviewPolicy, ReviewStats, review_threshold
from biocnn.segment.uncertainty import maps_from_stats, structure_uncertainty

log = logging.getLogger(__name__)

# Data settings that every model of an ensemble must share.
_SHARED = ("spatial_dims", "in_channels", "modalities", "label_values", "pixdim")


def load_models(model_dirs: Sequence[str | Path], device: torch.device):
    """Load one or more model directories; they must agree on their data settings.

    Returns the models, the shared data settings, the first model's inference settings and
    each model's ``inference.temperature`` (``None`` where none was fitted).
    """
    models, configs = [], []
    for d in model_dirs:
        model, config = load_model(d, device, expect="unet")
        if "data" not in config or "inference" not in config:
            raise CheckpointError(f"{d}: not a segmentation model (config.json has no data/inference)")
        models.append(model)
        configs.append(config)
    first = configs[0]["data"]
    for d, c in zip(model_dirs[1:], configs[1:]):
        diff = [k for k in _SHARED if c["data"].get(k) != first.get(k)]
        if diff:
            raise CheckpointError(
                f"{d}: cannot ensemble with {model_dirs[0]}: data settings differ ({', '.join(diff)})"
            )
    temperatures = [c["inference"].get("temperature") for c in configs]
    return models, DataConfig(**first), InferenceConfig(**configs[0]["inference"]), temperatures


class Segmenter:
    """Everything needed to predict one case after another with the same settings."""

    def __init__(
        self,
        model_dirs: Sequence[str | Path],
        mc_samples: int | None = None,
        tta: bool = False,
        device: str = "auto",
        fast: bool = True,
        amp: bool = True,
        sw_batch_size: int | None = None,
        reference: str | Path | None = None,
    ):
        self.device = select_device(device)
        self.models, self.data, self.inference, temperatures = load_models(model_dirs, self.device)
        if sw_batch_size is not None:
            # Windows per forward pass: the config's value suits a CPU; a GPU wants more.
            if sw_batch_size < 1:
                raise BiocnnError(f"--sw-batch-size must be at least 1, got {sw_batch_size}")
            self.inference = self.inference.model_copy(update={"sw_batch_size": sw_batch_size})
        self.mc_samples = mc_samples if mc_samples is not None else self.inference.mc_samples
        self.tta = tta
        # Review statistics per model (None where the model directory has none).
        self.review_stats = [ReviewStats.load(d) for d in model_dirs]
        # The sampling passes also record the encoder features the review needs.
        self.predictor = UncertaintyPredictor(
            self.models,
            self.data.spatial_dims,
            self.mc_samples,
            self.inference.mc_batch,
            tta,
            fast,
            amp,
            temperatures,
            features=any(s is not None for s in self.review_stats),
        )
        self.pre = preprocessing(self.data, train=False, with_label=False)
        policy = ReviewPolicy.from_config(self.inference)
        values, source = None, None
        if reference is not None and policy.review_threshold is not None:
            log.warning("inference.review_threshold is set in the model config: --reference is not used")
        elif reference is not None:
            values, failures = self.reference_values(reference)
            source = {"source": str(reference), "images": len(values), "failures": failures}
        threshold, found = review_threshold(policy, self.review_stats, len(self.models), self.mc_samples, tta, values)
        # Where the threshold came from ("review_reference" in predict.json).
        self.threshold_source = source or found
        self.reviewer = Reviewer(policy, self.review_stats, threshold)

    def reference_values(self, reference: str | Path) -> tuple[list[float], list[dict[str, str]]]:
        """Structure uncertainty of every case under ``reference`` with this sampling (the value
        ``predict`` would write for it) and the cases that failed to load."""
        values, failures = [], []
        cases = find_cases(
            reference, self.data.spatial_dims, self.data.modalities, failures=failures, datalist_key="training"
        )
        for case in cases:
            try:
                maps, _ = self.maps(case)
            except BiocnnError as exc:
                failures.append({"case": case.id, "error": str(exc)})
                log.error("reference %s: %s", case.id, exc)
                continue
            values.append(structure_uncertainty(maps["prob"], maps["label"], self.inference.structure_margin))
            if self.predictor.features:
                self.predictor.take_features()  # not needed for the threshold
        if len(values) < 3:
            raise BiocnnError(
                f"{reference}: {len(values)} readable reference images; the review threshold needs at least 3"
            )
        log.info("review reference: %d images from %s", len(values), reference)
        return values, failures

    def stats(self, case: Case):
        """``(stats (C + 1, *spatial) in the input's grid, preprocessed item)``."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        item = load_case(self.pre, Case(case.id, case.images))
        image = item["image"]
        inference = self.inference
        stats = sliding_stats(
            image.as_tensor(),
            self.predictor,
            inference.roi_size,
            inference.sw_batch_size,
            inference.overlap,
            device=self.device,
        )
        if self.data.spatial_dims == 3 and image.applied_operations:
            # Undo orientation (and resampling) so outputs line up with the input file.
            meta = MetaTensor(stats, meta=dict(image.meta))
            item["pred"] = meta
            inv = Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=False)
            stats = torch.as_tensor(inv(item)["pred"])
            if self.data.crop_foreground:  # cropped away (all channels 0 after padding back): certain background
                stats[0][stats[:-1].sum(0) == 0] = 1.0
        return stats, item

    def maps(self, case: Case) -> tuple[dict[str, np.ndarray], dict]:
        """``(maps, preprocessed item)``: the case's probability, label, entropy and mutual
        information maps (:func:`~biocnn.segment.uncertainty.maps_from_stats`) in its grid."""
        with case_seed(case.id, self.device):  # the same input gives the same samples, whatever else is predicted
            stats, item = self.stats(case)
        maps = {k: v[0].numpy() for k, v in maps_from_stats(stats[None].float()).items()}
        bad = [k for k in ("prob", "entropy", "mutual_info") if not np.isfinite(maps[k]).all()]
        if bad:
            # NaN probabilities would argmax to background: a confident empty segmentation.
            raise InputError(
                case.images[0],
                f"case {case.id}: the model's {'/'.join(bad)} values are not finite (NaN or Inf); "
                "are the intensities far outside what the model was trained on?",
            )
        return maps, item

    def predict_case(self, case: Case, out_dir: Path) -> dict[str, Any]:
        """Predict one case, write its files, return its ``uncertainty.csv`` row."""
        maps, item = self.maps(case)
        features = self.predictor.take_features() if self.predictor.features else None
        prob, label_idx, ent, mi = maps["prob"], maps["label"], maps["entropy"], maps["mutual_info"]
        labels = index_to_label(label_idx, self.data.label_values)
        if self.data.spatial_dims == 2:
            written = self._write_2d(case, out_dir, labels, prob, ent, mi)
        else:
            written = self._write_3d(case, out_dir, labels, prob, ent, mi)
        return {
            "case": case.id,
            **self.review(prob, label_idx, features),
            "mean_entropy": float(ent.mean()),
            "mean_mutual_info": float(mi.mean()),
            "foreground_fraction": float((label_idx > 0).mean()),
            "label_file": written,
        }

    def review(self, prob: np.ndarray, label_idx: np.ndarray, features: list[np.ndarray] | None) -> dict[str, Any]:
        """The review score, flag and their components for one input (see the module doc);
        ``features``: per model, the ``(views, D)`` encoder features its sampling recorded."""
        if features is not None:
            features = [f for f, s in zip(features, self.review_stats) if s is not None]
        return self.reviewer.row(prob, label_idx, features)

    def _write_2d(self, case, out_dir, labels, prob, ent, mi) -> str:
        from biocnn.io.images import read_image, write_float_tiff, write_label

        label_path = output_path(out_dir, case.id, "label.png")
        write_label(label_path, labels)
        write_float_tiff(output_path(out_dir, case.id, "prob.tif"), prob)
        write_float_tiff(output_path(out_dir, case.id, "entropy.tif"), ent)
        write_float_tiff(output_path(out_dir, case.id, "mutual_info.tif"), mi)
        overlay = output_path(out_dir, case.id, "overlay.png")
        overlay_png(overlay, read_image(case.images[0]), labels, ent, title=case.id)
        return label_path.name

    def _write_3d(self, case, out_dir, labels, prob, ent, mi) -> str:
        from biocnn.io.nifti import read_volume, save_like

        first, ref = read_volume(case.images[0])
        label_path = output_path(out_dir, case.id, "label.nii.gz")
        save_like(label_path, labels, ref, np.uint8 if max(self.data.label_values) < 256 else np.int16)
        save_like(output_path(out_dir, case.id, "prob.nii.gz"), np.moveaxis(prob, 0, -1), ref, np.float32)
        save_like(output_path(out_dir, case.id, "entropy.nii.gz"), ent, ref, np.float32)
        save_like(output_path(out_dir, case.id, "mutual_info.nii.gz"), mi, ref, np.float32)
        vol = first if first.ndim == 3 else first[..., 0]
        z = pick_slice(labels, ent)
        overlay_png(
            output_path(out_dir, case.id, "overlay.png"),
            vol[None, :, :, z],
            labels[:, :, z],
            ent[:, :, z],
            title=f"{case.id} (slice {z})",
        )
        return label_path.name


def output_path(out_dir: str | Path, case_id: str, what: str) -> Path:
    """``out_dir/<case id>_<what>``, the case id made file-name safe (:func:`~biocnn.io.paths.safe_component`)."""
    return inside(out_dir, f"{safe_component(case_id)}_{what}")


CSV_FIELDS = (
    "case",
    "score",
    "flag",
    "structure_uncertainty",
    "expected_dice_error",
    "feature_distance",
    "ood_percentile",
    "mean_entropy",
    "mean_mutual_info",
    "foreground_fraction",
    "label_file",
)


def predict(
    model_dirs: Sequence[str | Path],
    input_path: str | Path,
    out_dir: str | Path,
    mc_samples: int | None = None,
    tta: bool = False,
    device: str = "auto",
    sw_batch_size: int | None = None,
    reference: str | Path | None = None,
    datalist_key: str = "test",
) -> dict[str, Any]:
    """Predict every case under ``input_path``; returns the summary written to predict.json.

    ``input_path`` may be a datalist JSON: its ``datalist_key`` list is predicted (a
    ``--reference`` datalist's ``training`` list is read).

    ``reference``: the models' training images, to measure the review threshold with this
    prediction's sampling (see :func:`~biocnn.segment.review.review_threshold`; needed for ensembles).
    """
    out_dir = ensure_writable_dir(out_dir)  # before any long work
    seg = Segmenter(model_dirs, mc_samples, tta, device, sw_batch_size=sw_batch_size, reference=reference)
    # A case that cannot be read, or is incomplete, is a failure; the others are still predicted.
    failures: list[dict[str, str]] = []
    cases = find_cases(
        input_path, seg.data.spatial_dims, seg.data.modalities, failures=failures, datalist_key=datalist_key
    )
    not_cases = len(failures)
    rows = []
    for case in cases:
        try:
            rows.append(seg.predict_case(case, out_dir))
            log.info("%s: score %.4f", case.id, rows[-1]["score"])
        except BiocnnError as exc:
            failures.append({"case": case.id, "error": str(exc)})
            log.error("%s: %s", case.id, exc)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "uncertainty.csv", buf.getvalue())
    summary = {
        "models": [str(m) for m in model_dirs],
        "input": str(input_path),
        "mc_samples": seg.mc_samples,
        "tta": tta,
        "temperatures": seg.predictor.temperatures,
        "sw_batch_size": seg.inference.sw_batch_size,
        "spatial_dims": seg.data.spatial_dims,
        "label_values": seg.data.label_values,
        "regions": seg.data.regions,
        "modalities": seg.data.modalities,
        "inputs_seen": len(cases) + not_cases,
        "outputs_written": len(rows),
        "failures": failures,
        "review_threshold": seg.reviewer.threshold,
        "review_reference": seg.threshold_source,
        "ood_quantile": seg.inference.ood_quantile,
        "review_statistics": [s is not None for s in seg.review_stats],
        "flagged": [r["case"] for r in rows if r["flag"] == "yes"],
    }
    write_json(out_dir / "predict.json", summary)
    return summary
