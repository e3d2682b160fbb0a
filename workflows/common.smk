# Shared by every task workflow: config validation, paths, the `biocnn` command.
# Rules call the `biocnn` command line; the library never calls Snakemake.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.0")

validate(config, "schemas/config.schema.yaml")

# The repository root (where the Snakefile lives): task config files named in the workflow
# config are resolved against it, so a run in another --directory still finds them.
REPO = Path(workflow.basedir)
RESULTS = config["results"]
BIOCNN = config.get("biocnn", "biocnn")
# GPUs asked for by training rules (the SLURM profile turns this into --gpus). With more than
# one, training runs under torchrun, one process per GPU (DistributedDataParallel in biocnn.train).
TRAIN_GPUS = config.get("train_gpus", 1)
TORCHRUN = config.get("torchrun", "torchrun")


def train_command():
    """The command of a training rule: `biocnn`, or biocnn started by torchrun for more than one
    GPU (every rank's output in the rule log, prefixed with its rank)."""
    if TRAIN_GPUS > 1:
        return f"{TORCHRUN} --standalone --nproc_per_node {TRAIN_GPUS} --tee 3 -m biocnn"
    return BIOCNN


BIOCNN_TRAIN = train_command()


def task_enabled(task):
    """True when `task` is listed under `tasks:` in the workflow config."""
    return task in config["tasks"]


def repo_path(path):
    """A path from the config: absolute, relative to the working directory, or to the repo."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(REPO / p)


rule environment:
    """Versions and device of this run, kept with the results for reproducibility."""
    output:
        f"{RESULTS}/environment.json",
    log:
        f"{RESULTS}/logs/environment.log",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{BIOCNN} info --out {output} > {log} 2>&1"
