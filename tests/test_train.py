"""The shared training loop: resume after a hard kill, early stopping, seeding, budgets, DDP on gloo."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from biocnn.checkpoint import load_model, load_weights
from biocnn.config import TrainConfig
from biocnn.device import seed_everything
from biocnn.models import build_model
from biocnn.train import fit

SPEC = {
    "name": "classifier",
    "spatial_dims": 2,
    "in_channels": 1,
    "channels": [4, 8],
    "hidden": [8],
    "dropout": 0.1,
    "head_dropout": 0.2,
}


def _data(n=48, seed=123):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    y = (x[:, :, :6].mean((1, 2, 3)) > x[:, :, 6:].mean((1, 2, 3))).float()
    return TensorDataset(x, y)


def _config(**overrides):
    base = dict(
        epochs=4,
        batch_size=8,
        lr=3e-3,
        scheduler="cosine",
        grad_clip=1.0,
        seed=7,
        progress=False,
        early_stopping={"monitor": "val_loss", "mode": "min", "patience": 10},
    )
    base.update(overrides)
    return TrainConfig(**base)


def _train(out_dir, cfg, resume=False, callbacks=()):
    seed_everything(cfg.seed)
    model = build_model(SPEC)
    return fit(
        model,
        _data(),
        _data(24, seed=5),
        loss_fn=torch.nn.functional.binary_cross_entropy_with_logits,
        config=cfg,
        out_dir=out_dir,
        model_config={"model": SPEC},
        resume=resume,
        callbacks=callbacks,
    ), model


def _killed_after_epoch_2(out_dir, threads):
    # Bit-identical resume needs the same thread count on both sides (CPU reductions split by it).
    torch.set_num_threads(threads)

    def die(epoch, row):
        if epoch == 2:
            os._exit(137)  # like SIGKILL: no cleanup, no flushing of anything not yet on disk

    _train(out_dir, _config(), callbacks=[die])


def test_run_killed_after_epoch_2_and_resumed_matches_uninterrupted(tmp_path):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    _train(full_dir, _config())

    proc = mp.get_context("spawn").Process(target=_killed_after_epoch_2, args=(resumed_dir, torch.get_num_threads()))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 137
    state = json.loads((resumed_dir / "state" / "latest.json").read_text())
    assert state["epoch"] == 2
    assert len((resumed_dir / "metrics.jsonl").read_text().splitlines()) == 2

    # The model directory is written only when training ends; an interrupted run has none,
    # so Snakemake's clean-up of incomplete outputs cannot take the best epoch with it.
    assert not (resumed_dir / "weights.safetensors").exists()
    result, _ = _train(resumed_dir, _config(), resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]

    for name in ("weights.safetensors", "state/epoch-0004.safetensors"):
        a, b = load_weights(full_dir / name), load_weights(resumed_dir / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    full_rows = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_rows = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in full_rows] == [r["train_loss"] for r in resumed_rows]


def test_same_seed_same_weights_different_seed_different(tmp_path):
    _, a = _train(None, _config(epochs=2))
    _, b = _train(None, _config(epochs=2))
    _, c = _train(None, _config(epochs=2, seed=8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_early_stopping_on_named_metric_and_best_weights_kept(tmp_path):
    calls = []

    def validate(model, loader, device):
        calls.append(1)
        return {"val_score": [0.5, 0.9, 0.7, 0.6, 0.8, 0.95][len(calls) - 1]}

    cfg = _config(epochs=6, early_stopping={"monitor": "val_score", "mode": "max", "patience": 2})
    seed_everything(cfg.seed)
    model = build_model(SPEC)
    result = fit(
        model,
        _data(),
        _data(8),
        loss_fn=torch.nn.functional.binary_cross_entropy_with_logits,
        config=cfg,
        out_dir=tmp_path,
        model_config={"model": SPEC},
        validate=validate,
    )
    assert result.stopped_early and result.best_epoch == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == 2 and metrics["val_score"] == 0.9
    loaded, config = load_model(tmp_path)
    assert config["train"]["seed"] == 7
    for key, value in loaded.state_dict().items():
        # The model holds the best epoch's weights (compared on the CPU: training may have run on CUDA).
        assert torch.equal(value.cpu(), model.state_dict()[key].cpu())


def test_only_the_latest_state_is_kept_and_monitor_must_exist(tmp_path):
    _train(tmp_path, _config(epochs=3))
    state = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert state[1:] == ["epoch-0003.safetensors", "latest.json"] and state[0].startswith("best-epoch-")
    with pytest.raises(ValueError, match="monitor"):
        _train(None, _config(early_stopping={"monitor": "val_auc"}))


_DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_train as t
from biocnn.checkpoint import save_weights
import torch.distributed as dist
torch.set_num_threads(1)
_, model = t._train({out!r} + "/model", t._config(epochs=2, device="cpu"))
rank = dist.get_rank() if dist.is_initialized() else int(__import__('os').environ['RANK'])
save_weights({out!r} + f"/rank{{rank}}.safetensors", model.state_dict())
"""


def test_torchrun_two_processes_on_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [load_weights(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    # DDP all-reduces gradients, so both ranks end with the same weights
    for key in results[0]:
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue  # batch-norm buffers are per rank between broadcasts
        assert torch.equal(results[0][key], results[1][key]), key
    model_dir = tmp_path / "model"  # written once, by rank 0
    assert len((model_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (model_dir / "weights.safetensors").is_file()
    # each rank saw half of the 48 training examples per epoch: 3 batches of 8 (not 6), 2 epochs
    state = load_weights(model_dir / "state" / "epoch-0002.safetensors")
    assert state["optim/0/step"].item() == 6


def test_resume_replays_monai_augmentation(tmp_path):
    """MONAI random transforms have their own RandomState; resuming must replay them too."""
    from monai.data import Dataset
    from monai.transforms import Compose, RandGaussianNoised, RandRotate90d

    base = _data()
    items = [{"image": base[i][0], "label": base[i][1]} for i in range(len(base))]
    augment = Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.5), RandRotate90d(keys="image", prob=0.5)])

    def run(out_dir, epochs, resume=False):
        cfg = _config(epochs=epochs, scheduler="none")  # a cosine schedule depends on epochs
        seed_everything(cfg.seed)
        model = build_model(SPEC)
        fit(
            model,
            Dataset(items, transform=augment),
            None,
            loss_fn=torch.nn.functional.binary_cross_entropy_with_logits,
            config=cfg.model_copy(
                update={"early_stopping": cfg.early_stopping.model_copy(update={"monitor": "train_loss"})}
            ),
            out_dir=out_dir,
            model_config={"model": SPEC},
            resume=resume,
        )
        return load_weights(out_dir / "state" / f"epoch-{epochs:04d}.safetensors")

    full = run(tmp_path / "full", 3)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 3, resume=True)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_warmup_ramps_the_rate_then_hands_over_and_survives_resume(tmp_path):
    """Linear warm-up from lr / 10 over warmup_epochs, then the cosine schedule over the rest;
    a run killed mid-way and resumed logs the same rates; plateau + warm-up is refused."""
    from biocnn.train import make_scheduler

    cfg = _config(epochs=6, warmup_epochs=2, lr=1e-2)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, rates = make_scheduler(opt, cfg), []
    for _ in range(cfg.epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:3] == pytest.approx([1e-3, 5.5e-3, 1e-2])  # warm-up, then the cosine's start
    assert rates[3] < rates[2] and rates[-1] < rates[3]  # cosine over the remaining 4 epochs

    def rows(out):
        return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    _train(tmp_path / "full", _config(epochs=4, warmup_epochs=2))

    def stop_after_epoch_1(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", _config(epochs=4, warmup_epochs=2), callbacks=[stop_after_epoch_1])
    _train(tmp_path / "resumed", _config(epochs=4, warmup_epochs=2), resume=True)
    assert rows(tmp_path / "resumed") == pytest.approx(rows(tmp_path / "full"))
    with pytest.raises(ValueError, match="plateau"):
        _config(warmup_epochs=2, scheduler="plateau")


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_max_steps_stops_mid_epoch_keeps_best_and_resume_repeats_the_partial_epoch(tmp_path):
    """6 steps per epoch; max_steps 9 stops in epoch 2, which is validated but not resumable
    state, so resuming without the budget ends with the uninterrupted run's weights."""
    full, _ = _train(tmp_path / "full", _config(epochs=3))
    assert full.stopped == "epochs" and full.steps_done == 18  # default: no budget, every epoch
    assert all("partial" not in row for row in full.history)

    stopped, model = _train(tmp_path / "budget", _config(epochs=3, max_steps=9))
    assert stopped.stopped == "max_steps" and stopped.steps_done == 9
    assert [r["epoch"] for r in stopped.history] == [1, 2] and "val_loss" in stopped.history[1]
    assert stopped.history[1]["partial"] == "3 of 6 steps (max_steps)"
    metrics = json.loads((tmp_path / "budget" / "metrics.json").read_text())
    assert metrics["stopped"] == "max_steps" and metrics["steps_done"] == 9 and metrics["epochs_done"] == 2
    loaded, _ = load_model(tmp_path / "budget")
    best = min(stopped.history, key=lambda r: r["val_loss"])
    assert metrics["best_epoch"] == best["epoch"]
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in loaded.state_dict().items())
    assert json.loads((tmp_path / "budget" / "state" / "latest.json").read_text())["epoch"] == 1

    again, _ = _train(None, _config(epochs=3, max_steps=9))  # same config + seed: same weights
    assert again.history[1]["train_loss"] == stopped.history[1]["train_loss"]

    resumed, _ = _train(tmp_path / "budget", _config(epochs=3), resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3] and resumed.steps_done == 18
    a, b = (load_weights(tmp_path / d / "weights.safetensors") for d in ("full", "budget"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_steps_at_an_epoch_boundary_stops_without_an_empty_epoch(tmp_path):
    result, _ = _train(tmp_path, _config(epochs=3, max_steps=6))
    assert result.stopped == "max_steps" and [r["epoch"] for r in result.history] == [1]
    assert "partial" not in result.history[0] and (tmp_path / "weights.safetensors").is_file()


def test_tiny_max_seconds_stops_early_but_validates_once(tmp_path):
    result, _ = _train(tmp_path, _config(epochs=4, max_seconds=0.001))
    assert result.stopped == "max_seconds" and len(result.history) < 4
    assert result.steps_done < 24 and "val_loss" in result.history[-1]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped"] == "max_seconds" and metrics["steps_done"] == result.steps_done
    assert (tmp_path / "weights.safetensors").is_file()
    with pytest.raises(ValueError, match="max_seconds"):
        _config(max_seconds=0)
