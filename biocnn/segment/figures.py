"""Pictures a person can check: image with predicted contour, and the uncertainty heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biocnn.io.atomic import atomic_path


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> something imshow draws: RGB as is, else the first channel, 1-99% scaled."""
    img = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay_png(
    path: str | Path,
    image: np.ndarray,
    label: np.ndarray,
    uncertainty: np.ndarray,
    title: str = "",
    truth: np.ndarray | None = None,
) -> None:
    """Two panels: image + contour of each predicted class (and of the truth, dashed, if
    given); image + uncertainty heat (predictive entropy). ``image`` is ``(C, H, W)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _display(image)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    for ax in axes:
        ax.imshow(shown, cmap="gray")
        ax.set_axis_off()
    for k in [v for v in np.unique(label) if v != 0]:
        axes[0].contour(label == k, levels=[0.5], colors=[cmap(int(k) % 10)], linewidths=1.0)
    if truth is not None:
        for k in [v for v in np.unique(truth) if v != 0]:
            axes[0].contour(truth == k, levels=[0.5], colors=[cmap(int(k) % 10)], linewidths=0.8, linestyles="dashed")
    axes[0].set_title("prediction" + (" (solid) / truth (dashed)" if truth is not None else ""), fontsize=9)
    top = max(float(uncertainty.max()), 1e-3)
    # Hide the faint floor so the image shows through where the model is sure.
    heat = axes[1].imshow(np.ma.masked_less(uncertainty, 0.05 * top), cmap="inferno", alpha=0.75, vmin=0, vmax=top)
    fig.colorbar(heat, ax=axes[1], fraction=0.046, label="predictive entropy (nats)")
    axes[1].set_title("uncertainty", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def pick_slice(label: np.ndarray, uncertainty: np.ndarray) -> int:
    """Axial (last-axis) slice to show: most foreground, else most uncertainty."""
    weight = (label > 0).sum(axis=(0, 1))
    if weight.max() == 0:
        weight = uncertainty.sum(axis=(0, 1))
    return int(np.argmax(weight))
