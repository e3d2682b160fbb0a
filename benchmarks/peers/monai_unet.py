"""MONAI's BasicUNet trained the way MONAI's own tutorials train a U-Net, for a wall-clock budget.

As in MONAI's ``unet_training_dict.py`` (2D) and ``brats_segmentation_3d`` tutorials: a
dictionary pipeline with the deterministic part cached (``CacheDataset``), intensity
normalisation, ``RandCropByPosNegLabeld`` patches, random flips, ``DiceCELoss`` on softmax
outputs, Adam at 1e-3, and ``sliding_window_inference`` for prediction. The patch size, patches
per image, positive fraction, images per step and the inference window are the biocnn config's,
so both networks see the same patches (the config's per-class patch ratios, where it sets them,
through MONAI's ``RandCropByLabelClassesd``). Training runs epoch after epoch until the budget is
spent, counted from before the data are cached; every training image is used (no early stopping
needs a validation split).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from peers.cases import Dataset, label_suffix, read_case, write_label


def _transforms(dataset: Dataset, cfg):
    from monai.transforms import (
        Compose,
        NormalizeIntensityd,
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
        RandFlipd,
    )

    d = cfg.data
    cached = [NormalizeIntensityd(keys="image", nonzero=dataset.spatial_dims == 3, channel_wise=True)]
    keys, size, n = ["image", "label"], list(d.patch_size), d.samples_per_image
    if d.class_ratios:  # the config draws patch centres per class: the same MONAI sampler
        crop = RandCropByLabelClassesd(
            keys,
            "label",
            size,
            ratios=list(d.class_ratios),
            num_classes=len(d.label_values),
            num_samples=n,
            allow_smaller=True,
        )
    else:
        crop = RandCropByPosNegLabeld(
            keys, "label", size, pos=d.pos_fraction, neg=1 - d.pos_fraction, num_samples=n, allow_smaller=True
        )
    random = [
        crop,
        *[RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=axis) for axis in range(dataset.spatial_dims)],
    ]
    return Compose(cached), Compose(cached + random)


def _index(label: np.ndarray, dataset: Dataset) -> np.ndarray:
    lut = np.zeros(max(dataset.label_values) + 1, np.int64)
    lut[list(dataset.label_values)] = np.arange(len(dataset.label_values))
    return lut[label]


def train(cases, dataset: Dataset, cfg, budget: float, seed: int = 0):
    """A BasicUNet trained on ``cases`` for ``budget`` seconds; returns ``(model, info)``."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet
    from monai.utils import set_determinism

    start = time.perf_counter()
    set_determinism(seed)
    items = []
    for case in cases:
        image, label, _ = read_case(case, dataset)
        items.append({"image": image, "label": _index(label, dataset)[None]})
    _, train_tf = _transforms(dataset, cfg)
    data = CacheDataset(items, train_tf, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(
        data, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0, collate_fn=list_data_collate
    )
    model = BasicUNet(
        spatial_dims=dataset.spatial_dims, in_channels=dataset.in_channels, out_channels=len(dataset.label_values)
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    epochs, steps, losses = 0, 0, []
    while time.perf_counter() - start < budget:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(loss.item())
            if time.perf_counter() - start >= budget:
                break
        epochs += 1
    info = {
        "train_seconds": time.perf_counter() - start,
        "epochs": epochs,
        "steps": steps,
        "last_loss": float(np.mean(losses[-10:])) if losses else None,
        "patch_size": list(cfg.data.patch_size),
    }
    return model, info


@torch.no_grad()
def predict(model, cases, dataset: Dataset, cfg, out: Path) -> tuple[dict[str, Path], float]:
    """Label maps of ``cases`` with ``sliding_window_inference``; returns them and the seconds taken."""
    from monai.inferers import sliding_window_inference

    start = time.perf_counter()
    cached_tf, _ = _transforms(dataset, cfg)
    model.eval()
    inf = cfg.inference
    predictions = {}
    for case in cases:
        image, _, ref = read_case(case, dataset)
        x = cached_tf({"image": image})["image"]
        logits = sliding_window_inference(
            torch.as_tensor(x)[None], list(inf.roi_size), inf.sw_batch_size, model, overlap=inf.overlap
        )
        index = logits[0].argmax(0).cpu().numpy()
        path = out / f"{case.id}{label_suffix(dataset)}"
        write_label(path, np.asarray(dataset.label_values)[index], ref)
        predictions[case.id] = path
    return predictions, time.perf_counter() - start


def run(train_cases, test_cases, dataset: Dataset, cfg, work: Path, budget: float):
    model, info = train(train_cases, dataset, cfg, budget)
    predictions, info["predict_seconds"] = predict(model, test_cases, dataset, cfg, work / "pred")
    return predictions, info
