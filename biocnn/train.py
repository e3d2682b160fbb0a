"""The one training loop every task uses.

:func:`fit` takes a model, datasets, a loss and a :class:`~biocnn.config.TrainConfig`, and
handles the rest: device choice, mixed precision on CUDA, gradient clipping, LR schedules,
early stopping on a named validation metric, deterministic per-epoch seeding, a checkpoint
after every epoch (written atomically), ``resume=True`` to continue an interrupted run, and
DistributedDataParallel when started by ``torchrun`` (``WORLD_SIZE > 1``).

Files in ``out_dir``:

* ``weights.safetensors``, ``config.json``, ``metrics.json``: the best epoch's model,
  written when training ends (see :mod:`biocnn.checkpoint`);
* ``metrics.jsonl``: one JSON line per epoch;
* ``state/epoch-NNNN.safetensors``, ``state/best-epoch-NNNN.safetensors`` and
  ``state/latest.json``: the last epoch's model and optimizer and the best epoch's weights,
  for ``resume``. ``latest.json`` is replaced only after the weights it names are fully
  written, so a kill at any moment leaves a consistent set.

Reproducibility: every epoch reseeds all RNGs from ``(seed, epoch)`` and the data order is
drawn from a generator seeded the same way, so a run resumed after epoch k draws exactly the
batches and dropout masks an uninterrupted run would have.

Budgets: ``train.max_steps`` stops after that many optimizer steps in all (the same weights on
every run), ``train.max_seconds`` before the step that would take this run's wall clock past
the budget (where it stops depends on the machine's speed). A partial last epoch is validated
like a full one, so a stopped run still has a best model; it is not written to ``state/``, so
``resume`` repeats that epoch from its start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from biocnn.checkpoint import load_weights, save_model, save_weights
from biocnn.config import TrainConfig
from biocnn.device import autocast, deterministic, seed_everything, select_device
from biocnn.errors import CheckpointError, ConfigError
from biocnn.io.atomic import write_json, write_text
from biocnn.predict import predict

log = logging.getLogger(__name__)

Batch = Any
PrepareBatch = Callable[[Batch, torch.device], tuple[Any, Any]]
Validate = Callable[[nn.Module, DataLoader, torch.device], dict[str, float]]
# Called after each epoch's checkpoint; a returned reason (e.g. "cpu_budget") ends training
# there, as the early stopper would, and becomes ``FitResult.stopped``.
Callback = Callable[[int, dict[str, Any]], str | None]


@dataclass
class FitResult:
    """What :func:`fit` returns: the best epoch, its metrics and the per-epoch history."""

    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    # Why training ended: "epochs", "early_stopping", "max_seconds", "max_steps" or a callback's reason.
    stopped: str = "epochs"
    steps_done: int = 0
    loop_seconds: float = 0.0


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def default_prepare_batch(batch: Batch, device: torch.device) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a ``(x, y)`` pair or a MONAI-style ``{"image", "label"}`` dict."""
    if isinstance(batch, dict):
        return to_device(batch["image"], device), to_device(batch["label"], device)
    return to_device(batch[0], device), to_device(batch[1], device)


def gather_outputs(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool,
    prepare_batch: PrepareBatch = default_prepare_batch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` (:func:`biocnn.predict.predict`, AMP as ``amp``, pass
    ``train.amp``); return all outputs (float32, CPU) and targets, concatenated.

    The shared first half of a ``validate`` callback: the caller turns the two tensors into its
    metrics (AUC, loss, ...).
    """
    targets = []

    def inputs():
        for batch in loader:
            x, target = prepare_batch(batch, device)
            targets.append(target.cpu())
            yield x

    outputs = predict(model, inputs(), device, amp)
    return outputs, torch.cat(targets)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of (seed, epoch) only, so resuming reproduces it."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def reseed_transforms(data: Any, seed: int) -> None:
    """Reseed MONAI random transforms of ``data`` (a dataset with a ``transform``).

    MONAI's random transforms keep their own ``RandomState`` rather than the global one, so
    reseeding torch/NumPy alone would let a resumed run draw different augmentations than an
    uninterrupted one. Seeding them from ``(seed, epoch)`` makes every epoch's draws a function
    of its number only.
    """
    transform = getattr(data, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed % 2**32)


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds torch in each worker; NumPy-based transforms need their own seed.
    import numpy as np

    np.random.seed(torch.initial_seed() % 2**32)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer``: ``adam``, ``adamw`` or ``sgd`` (Nesterov momentum)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ConfigError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}; choose adam, adamw or sgd")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The LR schedule named by ``cfg.scheduler`` (``None`` for a constant rate), after
    ``cfg.warmup_epochs`` epochs of linear warm-up from a tenth of the rate when set."""
    main = _main_scheduler(optimizer, cfg)
    if not cfg.warmup_epochs:
        return main
    sched = torch.optim.lr_scheduler
    warmup = sched.LinearLR(optimizer, start_factor=0.1, total_iters=cfg.warmup_epochs)
    if main is None:
        return warmup  # its factor stays 1 after the warm-up
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs])


def _main_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "plateau":
        es = cfg.early_stopping
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=es.mode, factor=cfg.gamma, patience=max(1, es.patience // 2)
        )
    if cfg.scheduler in (None, "none"):
        return None
    raise ConfigError(f"train.scheduler: unknown schedule {cfg.scheduler!r}; choose none, cosine, step or plateau")


class _Distributed:
    """The process group when started by torchrun (``WORLD_SIZE > 1``).

    Its lifetime is a ``with`` block: entering creates the group (unless the caller already
    has one), leaving destroys the group it created.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world_size > 1
        self._owns_group = False

    def __enter__(self) -> _Distributed:
        if self.enabled and not dist.is_initialized():
            # The backend follows the training device, not CUDA's presence: a CPU run
            # (``train.device: cpu``) on a GPU machine needs gloo, NCCL handles CUDA tensors only.
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_group = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_group:
            dist.destroy_process_group()
            self._owns_group = False

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside DistributedDataParallel when distributed, else ``model`` itself."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class _EarlyStopping:
    """Tracks the best value of the monitored metric and the epochs since it improved."""

    def __init__(self, mode: str, patience: int, min_delta: float):
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; return True when it is a new best."""
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better or self.best_epoch < 0:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


class _Budget:
    """When to stop before the next optimizer step: ``max_steps`` steps done in all, or a wall
    clock (since this run started) that the next step and the validation after it would take
    past ``max_seconds``.

    The next step's cost is the mean step time of this run (data loading included) and the
    validation's the last one measured; a time budget always allows this run one step.
    """

    def __init__(self, cfg: TrainConfig, steps_done: int):
        self.max_seconds, self.max_steps = cfg.max_seconds, cfg.max_steps
        self.start = time.perf_counter()
        self.steps = 0  # steps of this run (a resumed run counts from the resume)
        self.step_seconds = 0.0
        self.validation_seconds = 0.0
        self.steps_before = steps_done

    def step_done(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reason(self) -> str | None:
        """``"max_steps"`` or ``"max_seconds"`` when the next step must not start, else ``None``."""
        if self.max_steps is not None and self.steps_before + self.steps >= self.max_steps:
            return "max_steps"
        if self.max_seconds is not None and self.steps:
            next_step = self.step_seconds / self.steps
            if self.elapsed() + next_step + self.validation_seconds > self.max_seconds:
                return "max_seconds"
        return None


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors for safetensors, the rest for JSON). No pickle."""
    tensors, meta = {}, {}
    for idx, param_state in state["state"].items():
        meta[str(idx)] = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                meta[str(idx)][key] = value
    return tensors, {"state": meta, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class Trainer:
    """The training loop; most callers use :func:`fit`, which builds and runs one."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        model_config: dict[str, Any] | None = None,
        validate: Validate | None = None,
        prepare_batch: PrepareBatch = default_prepare_batch,
        callbacks: Sequence[Callback] = (),
        collate_fn: Callable | None = None,
    ):
        self.cfg = config
        self.loss_fn = loss_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_config = model_config
        if self.out_dir is not None and (not model_config or "model" not in model_config):
            raise ValueError("model_config with a 'model' section is required to write checkpoints")
        self.validate_fn = validate
        self.prepare_batch = prepare_batch
        self.callbacks = list(callbacks)
        self.collate_fn = collate_fn
        self.device = select_device(config.device)
        self.dist = _Distributed(self.device)
        self.model = model.to(self.device)
        # What runs the batches: the model, or DistributedDataParallel around it during fit.
        self.net: nn.Module = self.model
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        es = config.early_stopping
        self.stopper = _EarlyStopping(es.mode, es.patience, es.min_delta)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.steps_done = 0  # optimizer steps over the whole run, resumes included
        self.budget = _Budget(config, 0)
        # The best epoch's weights (CPU copies) and metrics row; with an out_dir the weights
        # are also written to state/ (see _best_file) so that resume finds them.
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_row: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- data
    def _loader(self, data: Dataset, epoch: int, train: bool, sample_weights: Sequence[float] | None) -> DataLoader:
        generator = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch))
        sampler = None
        if train and self.dist.enabled:
            if sample_weights is not None:
                raise ValueError("sample_weights are not supported with distributed training; weight the loss")
            sampler = DistributedSampler(data, shuffle=True, seed=self.cfg.seed, drop_last=False)
            sampler.set_epoch(epoch)
        elif train and sample_weights is not None:
            sampler = WeightedRandomSampler(list(sample_weights), num_samples=len(data), generator=generator)
        elif train:
            sampler = RandomSampler(data, generator=generator)
        return DataLoader(
            data,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            worker_init_fn=_worker_init,
            generator=generator,
            pin_memory=self.device.type == "cuda",
            collate_fn=self.collate_fn,
            persistent_workers=False,
        )

    # ----------------------------------------------------------------------------- epochs
    def _stop_reason(self) -> str | None:
        """The budget's verdict before the next step; under torchrun rank 0's, so that all
        ranks stop at the same step."""
        reason = self.budget.reason()
        if self.budget.max_seconds is not None and self.dist.enabled:
            reason = self.dist.broadcast(reason)
        return reason

    def _train_epoch(self, loader: DataLoader, epoch: int) -> tuple[float, int, str | None]:
        """Train one epoch, or its first steps when a budget ends inside it; returns the mean
        loss, the steps taken and the budget that stopped it (``None`` for a full epoch)."""
        self.net.train()
        total, count, steps, reason = 0.0, 0, 0, None
        n_batches = len(loader)
        tick = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not (self.cfg.progress and self.dist.is_main),
        )
        for batch in bar:
            inputs, targets = self.prepare_batch(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp):
                loss = self.loss_fn(self.net(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}; lower the learning rate")
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = len(targets) if hasattr(targets, "__len__") else 1
            total += loss.item() * n
            count += n
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            steps += 1
            self.steps_done += 1
            now = time.perf_counter()
            self.budget.step_done(now - tick)
            tick = now
            if steps < n_batches:
                reason = self._stop_reason()
                if reason is not None:
                    break
        return total / max(count, 1), steps, reason

    @torch.no_grad()
    def _default_validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in loader:
            inputs, targets = self.prepare_batch(batch, device)
            with autocast(device, self.amp):
                loss = self.loss_fn(model(inputs), targets)
            n = len(targets) if hasattr(targets, "__len__") else 1
            total += loss.item() * n
            count += n
        return {"val_loss": total / max(count, 1)}

    def _validate(self, loader: DataLoader | None) -> dict[str, float]:
        if loader is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            fn = self.validate_fn or self._default_validate
            with torch.no_grad():
                return {k: float(v) for k, v in fn(self.model, loader, self.device).items()}
        finally:
            self.model.train(was_training)

    # ----------------------------------------------------------------------------- state
    def _state_dir(self) -> Path:
        assert self.out_dir is not None
        return self.out_dir / "state"

    def _best_file(self) -> str | None:
        """The name in ``state/`` of the best weights' copy on disk (``None`` before the first epoch)."""
        return f"best-epoch-{self.best_row['epoch']:04d}.safetensors" if self.best_row else None

    def _save_state(self, epoch: int) -> None:
        """Write this epoch's resumable state: weights first, then the JSON that names them."""
        state_dir = self._state_dir()
        state_dir.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_meta = _split_optimizer_state(self.optimizer.state_dict())
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        weights_name = f"epoch-{epoch:04d}.safetensors"
        save_weights(state_dir / weights_name, tensors)
        meta = {
            "epoch": epoch,
            "weights": weights_name,
            "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
            "steps": self.steps_done,
            "seed": self.cfg.seed,
            "best_weights": self._best_file(),
            "best_row": self.best_row,
        }
        write_json(state_dir / "latest.json", meta)
        for old in state_dir.glob("*epoch-*.safetensors"):
            if old.name not in (weights_name, self._best_file()):
                old.unlink(missing_ok=True)

    def _load_state(self) -> bool:
        """Restore the last saved epoch; False when there is nothing to resume."""
        latest = self._state_dir() / "latest.json"
        if not latest.is_file():
            return False
        meta = json.loads(latest.read_text())
        if meta.get("seed") != self.cfg.seed:
            raise CheckpointError(
                f"{latest}: saved with seed {meta.get('seed')}, config has seed {self.cfg.seed}; "
                "resume with the same config or start a new output directory"
            )
        tensors = load_weights(self._state_dir() / meta["weights"])
        model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(_join_optimizer_state(tensors, meta["optimizer"]))
        if self.scheduler is not None and meta["scheduler"] is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        if meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        self.stopper.load_state_dict(meta["early_stopping"])
        self.history = meta["history"]
        self.steps_done = meta.get("steps", 0)
        self.best_row = meta["best_row"]
        if meta["best_weights"] is not None:
            self.best_weights = load_weights(self._state_dir() / meta["best_weights"])
        self.start_epoch = meta["epoch"] + 1
        return True

    def _write_metrics(self) -> None:
        assert self.out_dir is not None
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.history)
        write_text(self.out_dir / "metrics.jsonl", lines)

    def _save_best(self, row: dict[str, Any]) -> None:
        """Keep the best epoch's weights in memory; with an ``out_dir``, rank 0 also writes them
        to ``state/best-epoch-NNNN.safetensors`` for resume.

        The model directory itself (``weights.safetensors`` ...) is written once, when
        training ends (:meth:`_finish`), so a complete model directory means finished training,
        and Snakemake may delete an interrupted run's outputs without losing the best epoch.
        """
        self.best_row = row
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        if self.out_dir is not None and self.dist.is_main:
            self._state_dir().mkdir(parents=True, exist_ok=True)
            save_weights(self._state_dir() / self._best_file(), self.best_weights)

    # ----------------------------------------------------------------------------- main
    def fit(
        self,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        resume: bool = False,
        sample_weights: Sequence[float] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` or early stopping; returns the best epoch and history.

        Deterministic kernels, the CUDA device and the process group (under torchrun) are set
        for the duration of the call only; the caller's settings are restored afterwards.
        """
        monitor = self.cfg.early_stopping.monitor
        cuda = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with deterministic(), cuda, self.dist:
            self.net = self.dist.wrap(self.model)
            try:
                if self.out_dir is not None:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    if resume and self._load_state():
                        log.info("resuming %s from epoch %d", self.out_dir, self.start_epoch)
                return self._run(train_data, val_data, sample_weights, monitor)
            finally:
                self.net = self.model

    def _run(self, train_data, val_data, sample_weights, monitor) -> FitResult:
        self.budget = _Budget(self.cfg, self.steps_done)  # the clock starts here, also on resume
        stopped = "early_stopping" if self.stopper.should_stop and self.start_epoch > 1 else "epochs"
        val_loader = self._loader(val_data, 0, False, None) if val_data is not None else None
        for epoch in range(self.start_epoch, self.cfg.epochs + 1):
            if stopped != "epochs":
                break
            reason = self._stop_reason()
            if reason is not None:  # the budget ended with the last epoch: nothing new to validate
                stopped = reason
                break
            seed_everything(epoch_seed(self.cfg.seed, epoch))
            reseed_transforms(train_data, epoch_seed(self.cfg.seed, epoch))
            start = time.perf_counter()
            loader = self._loader(train_data, epoch, True, sample_weights)
            train_loss, steps, reason = self._train_epoch(loader, epoch)
            validation_start = time.perf_counter()
            metrics = self.dist.broadcast(self._validate(val_loader) if self.dist.is_main else None)
            self.budget.validation_seconds = time.perf_counter() - validation_start
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                **metrics,
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
                "step": self.steps_done,
            }
            if reason is not None:
                row["partial"] = f"{steps} of {len(loader)} steps ({reason})"
            if monitor not in row:
                raise ValueError(f"early_stopping.monitor is {monitor!r} but the epoch produced {sorted(row)}")
            if self.scheduler is not None and reason is None:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(row[monitor])
                else:
                    self.scheduler.step()
            improved = self.stopper.update(float(row[monitor]), epoch)
            self.history.append(row)
            if improved:
                self._save_best(row)
            if self.dist.is_main:
                if self.out_dir is not None:
                    if reason is None:  # a partial epoch is not resumable state (see the module doc)
                        self._save_state(epoch)
                    self._write_metrics()
                log.info(
                    "epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
                )
            self.dist.barrier()
            asked = [r for r in (callback(epoch, row) for callback in self.callbacks) if r]
            asked = self.dist.broadcast(asked[0] if asked else None)  # rank 0's, so all ranks stop together
            if reason is not None:
                stopped = reason
            elif self.stopper.should_stop:
                stopped = "early_stopping"
            elif asked is not None:
                stopped = asked
        if stopped in ("max_seconds", "max_steps"):
            log.info(
                "training stopped by train.%s after %d steps (%.0f s)", stopped, self.steps_done, self.budget.elapsed()
            )
        return self._finish(stopped)

    def _finish(self, stopped: str) -> FitResult:
        """Load the best weights into the model (as Keras' ``restore_best_weights``) and, when
        there is an output directory, write the model directory from them.

        ``metrics.json`` holds the best epoch's row and how training ended: ``stopped``,
        ``epochs_done`` (the last one possibly partial), ``steps_done``, ``loop_seconds`` (this
        run's loop) and ``loop_finished_at`` (Unix time), which lets a caller tell the loop from
        what its process did before and after it.
        """
        self.dist.barrier()
        ended = {
            "stopped": stopped,
            "epochs_done": self.history[-1]["epoch"] if self.history else 0,
            "steps_done": self.steps_done,
            "loop_seconds": self.budget.elapsed(),
            "loop_finished_at": time.time(),
        }
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            if self.out_dir is not None and self.dist.is_main:
                assert self.model_config is not None
                config = dict(self.model_config)
                config["train"] = self.cfg.model_dump()
                metrics = {"best_epoch": self.best_row["epoch"], **self.best_row, **ended}
                save_model(self.out_dir, self.model, config, metrics)
        return FitResult(
            self.stopper.best_epoch,
            dict(self.best_row),
            self.history,
            stopped == "early_stopping",
            stopped,
            self.steps_done,
            ended["loop_seconds"],
        )


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    model_config: dict[str, Any] | None = None,
    validate: Validate | None = None,
    prepare_batch: PrepareBatch = default_prepare_batch,
    resume: bool = False,
    sample_weights: Sequence[float] | None = None,
    callbacks: Sequence[Callback] = (),
    collate_fn: Callable | None = None,
) -> FitResult:
    """Train ``model`` with the shared loop.

    Args:
        model: the network (built after :func:`biocnn.device.seed_everything` for
            reproducible initial weights).
        train_data, val_data: datasets yielding ``(inputs, targets)`` or
            ``{"image", "label"}`` dicts (override with ``prepare_batch``).
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar``.
        config: optimizer, schedule, epochs, early stopping, seed, device, AMP.
        out_dir: model directory for checkpoints and metrics; ``None`` keeps everything in
            memory (cross-validation trials).
        model_config: what goes into ``config.json``; must hold ``{"model": {"name": ...}}``.
        validate: ``validate(model, val_loader, device) -> {"val_...": value}``; by default the
            mean validation loss (``val_loss``).
        resume: continue from ``out_dir/state`` if a previous run left one.
        sample_weights: per-example sampling weights (class imbalance), single process only.
        callbacks: called as ``callback(epoch, metrics_row)`` after each epoch's checkpoint; one
            that returns a reason (a string) ends training after that epoch.
        collate_fn: passed to the DataLoader.

    Returns:
        :class:`FitResult`; the model holds the best epoch's weights afterwards.
    """
    trainer = Trainer(
        model,
        loss_fn,
        config,
        out_dir=out_dir,
        model_config=model_config,
        validate=validate,
        prepare_batch=prepare_batch,
        callbacks=callbacks,
        collate_fn=collate_fn,
    )
    return trainer.fit(train_data, val_data, resume=resume, sample_weights=sample_weights)
