"""nnU-Net v2 under a wall-clock budget: a trainer variant, and the train and predict steps.

Run by ``benchmarks/peers/nnunet.py`` in the Python that has ``nnunetv2`` installed (the
``peers`` extra, see docs/benchmarks.md), with ``nnUNet_raw``/``nnUNet_preprocessed``/
``nnUNet_results`` set to the benchmark's work folder:

    python nnunet_budget.py train --dataset-id 501 --configuration 2d --budget-seconds 720 --out train.json
    python nnunet_budget.py predict --dataset-id 501 --configuration 2d --inputs inputs.json --out pred/

nnU-Net's default schedule (1000 epochs of 250 iterations) needs days on a CPU. The variant
keeps everything of ``nnUNetTrainer`` (plans, network, augmentation, deep supervision, loss,
SGD with the poly schedule) and only changes how long it runs: short epochs, and as many of
them as fit the budget. The first epoch measures the epoch time; the poly learning-rate
schedule is then stretched over the epochs that fit, so the rate decays to the end of the
budget as it would over nnU-Net's full run. Training stops at the first iteration that ends
past the budget, which counts from the trainer's start (data loaders and unpacking included;
planning and preprocessing are not, they are timed apart).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming of trainer classes)
    """``nnUNetTrainer`` that trains for a wall-clock budget in short epochs.

    Built like any nnU-Net trainer (its constructor is nnU-Net's, which records its own
    arguments for checkpoints), then given the budget with :meth:`set_budget`.
    """

    def set_budget(self, budget_seconds: float, iterations_per_epoch: int) -> None:
        """``budget_seconds`` of wall clock from :meth:`run_training`'s start, in epochs of
        ``iterations_per_epoch`` training iterations (nnU-Net: 250) and one validation iteration
        (nnU-Net: 50; they only feed its progress log and its "best" checkpoint, and the final
        checkpoint is the one predicted with, so on a budget they are kept to the minimum)."""
        self.budget_seconds = float(budget_seconds)
        self.num_iterations_per_epoch = int(iterations_per_epoch)
        self.num_val_iterations_per_epoch = 1
        self.iterations_done = 0

    def run_training(self) -> None:
        start = time.perf_counter()

        def out_of_time() -> bool:
            return time.perf_counter() - start >= self.budget_seconds

        self.on_train_start()
        while self.current_epoch < self.num_epochs and not out_of_time():
            epoch_start = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += 1
                if out_of_time():
                    break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            if self.current_epoch == 1:  # the first epoch sets the schedule's length
                left = self.budget_seconds - (time.perf_counter() - start)
                self.num_epochs = 1 + max(0, int(left / (time.perf_counter() - epoch_start)))
                self.lr_scheduler.max_steps = self.num_epochs
                self.print_to_log_file(f"budget: {self.num_epochs} epochs fit in {self.budget_seconds:.0f} s")
        self.on_train_end()


def _trainer(args, fold: str = "all") -> nnUNetTrainerBudget:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(args.dataset_id)
    plans = load_json(join(nnUNet_preprocessed, name, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnU-Net's run_training adds before building a trainer
    dataset_json = load_json(join(nnUNet_preprocessed, name, "dataset.json"))
    trainer = nnUNetTrainerBudget(plans, args.configuration, fold, dataset_json, device=torch.device("cpu"))
    trainer.set_budget(args.budget_seconds, args.iterations_per_epoch)
    return trainer


def train(args) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # fold "all": nnU-Net's way to train one model on every training case (its validation
    # iterations then draw from the training cases; only its progress log uses them).
    trainer = _trainer(args)
    trainer.run_training()
    info = {
        "train_seconds": time.perf_counter() - start,
        "epochs": trainer.current_epoch,
        "iterations": trainer.iterations_done,
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "batch_size": trainer.configuration_manager.batch_size,
        "patch_size": list(trainer.configuration_manager.patch_size),
        "output_folder": trainer.output_folder,
    }
    Path(args.out).write_text(json.dumps(info, indent=1))


def predict(args) -> None:
    """nnU-Net's own inference (``nnUNetPredictor``: its preprocessing, Gaussian-weighted sliding
    windows, optional mirroring, its export) with the final checkpoint of :func:`train`."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(args.threads)
    model_dir = Path(json.loads(Path(args.train_info).read_text())["output_folder"])
    base = model_dir.parent
    plans_manager = PlansManager(load_json(join(base, "plans.json")))
    dataset_json = load_json(join(base, "dataset.json"))
    configuration = plans_manager.get_configuration(args.configuration)
    checkpoint = torch.load(model_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # The variant's network is nnUNetTrainer's (the trainer-name lookup nnU-Net's own loader does
    # only searches nnunetv2's package, so the network is built here and handed over).
    network = nnUNetTrainer.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=args.mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration,
        [checkpoint["network_weights"]],
        dataset_json,
        checkpoint["trainer_name"],
        checkpoint.get("inference_allowed_mirroring_axes"),
    )
    inputs = json.loads(Path(args.inputs).read_text())  # [{"files": [...], "output": ...}]
    predictor.predict_from_files_sequential(
        [item["files"] for item in inputs], [item["output"] for item in inputs], save_probabilities=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("train", "predict"):
        p = sub.add_parser(verb)
        p.add_argument("--dataset-id", type=int, required=True)
        p.add_argument("--configuration", required=True, help="2d or 3d_fullres")
        p.add_argument("--threads", type=int, default=2)
    p = sub.choices["train"]
    p.add_argument("--budget-seconds", type=float, required=True)
    p.add_argument("--iterations-per-epoch", type=int, default=10)
    p.add_argument("--out", required=True, help="JSON written after training")
    p = sub.choices["predict"]
    p.add_argument("--train-info", required=True, help="the JSON train wrote")
    p.add_argument("--inputs", required=True, help='JSON list of {"files": [...], "output": truncated path}')
    p.add_argument("--mirroring", action="store_true", help="nnU-Net's test-time mirroring (costly on a CPU)")
    args = parser.parse_args()
    train(args) if args.verb == "train" else predict(args)


if __name__ == "__main__":
    main()
