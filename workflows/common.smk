# Shared by every task workflow: config validation, paths, the `biocnn` command.
# Rules call the `biocnn` command line; the library never calls Snakemake.
from pathlib import Path

from snakemake.exceptions import WorkflowError
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


# Each task's training YAML, and the flags its training rule sets (their values are not known
# here): the YAML is checked with biocnn's own loader when the workflow loads.
_TASK_SCHEMAS = {
    "mammo": ("biocnn.mammo.config", "MammoConfig", {"data.manifest": "<set by the workflow>"}),
    "segment": ("biocnn.segment.config", "SegmentConfig", {"data.train": "<set by the workflow>"}),
    "deepbind": ("biocnn.deepbind.config", "DeepBindConfig", {}),
}


def task_config(task, path):
    """`path`, a task's training YAML, checked as `biocnn <task> train` will check it: an unknown
    key or a wrong value stops the workflow (a dry run too) with the file and the key. Not
    checked where biocnn cannot be imported here (the rule's own run checks it then)."""
    if not task_enabled(task):
        return path
    try:
        import importlib

        from biocnn.config import load_config
        from biocnn.errors import BiocnnError
    except ImportError:
        return path
    import_name, schema, overrides = _TASK_SCHEMAS[task]
    try:
        load_config(path, getattr(importlib.import_module(import_name), schema), overrides)
    except BiocnnError as exc:
        raise WorkflowError(f"{task} config: {exc}") from None
    return path


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
