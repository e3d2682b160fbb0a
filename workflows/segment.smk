# segment workflow: data -> train -> predict (MC dropout) -> evaluate -> report, per dataset.
# See docs/segmentation.md. Config (key `segment`, schema in workflows/schemas/config.schema.yaml):
#   the demo's generated kinds: kinds (malaria 2D, tumor 3D), seed, and per kind: config (the
#     training YAML), train_n, test_n, size, tta, epochs (overrides the YAML's train.epochs);
#   your datasets: datasets: {name: {config, train, test, predict: {set: path}, epochs, tta,
#     mc_samples}}, train/test a folder in biocnn's layout or a datalist JSON;
#   mc_samples (Monte Carlo dropout samples, per dataset if set there).
# A demo kind and a dataset are the same thing downstream of their data: one wildcard, `dataset`.
import re

SEGMENT = config.get("segment", {})
SEG_DIR = f"{RESULTS}/segment"
SEG_DATASETS_GIVEN = SEGMENT.get("datasets", {})
SEG_KINDS = SEGMENT.get("kinds", [] if SEG_DATASETS_GIVEN else ["malaria", "tumor"])
SEG_SEED = SEGMENT.get("seed", 7)
# Monte Carlo samples: passed to predict only when set here, else the model config's
# inference.mc_samples (the sampling its stored review threshold was measured with).
SEG_MC = SEGMENT.get("mc_samples")
_SEG_DEFAULTS = {
    "malaria": {"config": "configs/segment_malaria.yaml", "train_n": 24, "test_n": 8, "size": 128, "tta": False, "epochs": None},
    "tumor": {"config": "configs/segment_tumor.yaml", "train_n": 12, "test_n": 4, "size": 48, "tta": False, "epochs": None},
}


def seg_opt(kind, key):
    """A demo kind's setting from the workflow config, else the default above."""
    return SEGMENT.get(kind, {}).get(key, _SEG_DEFAULTS[kind][key])


def _seg_datasets():
    """Every dataset, demo kinds first: name -> config, train, test (paths; the demo's generated
    folders are marked by their cases.txt), predict sets, epochs, tta, mc_samples."""
    both = sorted(set(SEG_KINDS) & set(SEG_DATASETS_GIVEN))
    if both and task_enabled("segment"):
        raise WorkflowError(f"segment: {', '.join(both)} is both a demo kind and a dataset: rename the dataset")
    datasets = {}
    for kind in SEG_KINDS:
        datasets[kind] = {
            "config": repo_path(seg_opt(kind, "config")),
            "generated": True,
            "train": f"{SEG_DIR}/{kind}/train",
            "test": f"{SEG_DIR}/{kind}/test",
            "predict": {},
            "epochs": seg_opt(kind, "epochs"),
            "tta": seg_opt(kind, "tta"),
            "mc_samples": SEG_MC,
        }
    for name, given in SEG_DATASETS_GIVEN.items():
        datasets[name] = {
            "config": repo_path(given["config"]),
            "generated": False,
            "train": repo_path(given["train"]),
            "test": repo_path(given["test"]),
            "predict": {k: repo_path(v) for k, v in given.get("predict", {}).items()},
            "epochs": given.get("epochs"),
            "tta": given.get("tta", False),
            "mc_samples": given.get("mc_samples", SEG_MC),
        }
    return datasets


SEG_DATASETS = _seg_datasets()
for _d in SEG_DATASETS.values():  # each training YAML, checked now (see task_config)
    task_config("segment", _d["config"])


def seg_data(split):
    """Input function: a dataset's training or test data, as a file Snakemake can track (the
    generated folders' cases.txt; your folder or datalist JSON itself)."""

    def pick(wildcards):
        d = SEG_DATASETS[wildcards.dataset]
        return f"{d[split]}/cases.txt" if d["generated"] else d[split]

    return pick


SEGMENT_TARGETS = []
if task_enabled("segment") and not SEG_DATASETS:
    raise WorkflowError("segment: nothing to do: name your datasets (segment.datasets) or demo kinds (segment.kinds)")
if task_enabled("segment"):
    SEGMENT_TARGETS.append(f"{SEG_DIR}/report/summary.json")
    SEGMENT_TARGETS += [
        f"{SEG_DIR}/{name}/predictions/{s}/uncertainty.csv" for name, d in SEG_DATASETS.items() for s in d["predict"]
    ]

wildcard_constraints:
    kind="malaria|tumor",
    split="train|test",
    dataset="|".join(re.escape(d) for d in SEG_DATASETS) or "(?!)",
    set="[A-Za-z0-9][A-Za-z0-9_.-]*",


rule segment_synth:
    """Generated demo data: malaria PNG fields or tumor NIfTI cases (train and test seeds differ)."""
    output:
        f"{SEG_DIR}/{{kind}}/{{split}}/cases.txt",
    log:
        f"{RESULTS}/logs/segment/synth_{{kind}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/synth_{{kind}}_{{split}}.tsv"
    params:
        out=lambda w: f"{SEG_DIR}/{w.kind}/{w.split}",
        n=lambda w: seg_opt(w.kind, f"{w.split}_n"),
        size=lambda w: seg_opt(w.kind, "size"),
        seed=lambda w: SEG_SEED + (0 if w.split == "train" else 1000),
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{BIOCNN} segment synth --kind {wildcards.kind} --out {params.out} --n {params.n} "
        "--size {params.size} --seed {params.seed} > {log} 2>&1"


rule segment_train:
    """U-Net (shared backbone encoder + decoder), Dice + CE, validation Dice for early stopping.
    The training seed is the YAML's train.seed (`seed` here only seeds the generated data).
    The model dir also gets feature_stats.safetensors (encoder feature density of the training
    images and the review threshold) that predict uses to flag inputs for review."""
    input:
        data=seg_data("train"),
        config=lambda w: SEG_DATASETS[w.dataset]["config"],
    output:
        weights=f"{SEG_DIR}/{{dataset}}/model/weights.safetensors",
        config=f"{SEG_DIR}/{{dataset}}/model/config.json",
    log:
        f"{RESULTS}/logs/segment/train_{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/train_{{dataset}}.tsv"
    params:
        data=lambda w: SEG_DATASETS[w.dataset]["train"],
        out=lambda w: f"{SEG_DIR}/{w.dataset}/model",
        epochs=lambda w: f"--epochs {SEG_DATASETS[w.dataset]['epochs']}" if SEG_DATASETS[w.dataset]["epochs"] else "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    shell:
        "{BIOCNN_TRAIN} segment train --config {input.config:q} --train {params.data:q} --out {params.out} "
        "{params.epochs} --resume > {log} 2>&1"


def _seg_predict_args(w):
    """--mc-samples and --tta of a dataset."""
    d = SEG_DATASETS[w.dataset]
    return (f"--mc-samples {d['mc_samples']}" if d["mc_samples"] else "") + (" --tta" if d["tta"] else "")


rule segment_predict:
    """Sliding-window prediction of the test data with T Monte Carlo dropout samples: labels,
    probabilities, entropy, mutual information, overlays, uncertainty.csv (review score, flag,
    components)."""
    input:
        weights=f"{SEG_DIR}/{{dataset}}/model/weights.safetensors",
        data=seg_data("test"),
    output:
        csv=f"{SEG_DIR}/{{dataset}}/predict/uncertainty.csv",
        info=f"{SEG_DIR}/{{dataset}}/predict/predict.json",
    log:
        f"{RESULTS}/logs/segment/predict_{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/predict_{{dataset}}.tsv"
    params:
        model=lambda w: f"{SEG_DIR}/{w.dataset}/model",
        data=lambda w: SEG_DATASETS[w.dataset]["test"],
        out=lambda w: f"{SEG_DIR}/{w.dataset}/predict",
        sampling=_seg_predict_args,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{BIOCNN} segment predict --model {params.model} --input {params.data:q} --out {params.out} "
        "{params.sampling} > {log} 2>&1"


rule segment_predict_set:
    """A named set of a dataset's `predict` images (labels not needed), segmented like the test data."""
    input:
        weights=f"{SEG_DIR}/{{dataset}}/model/weights.safetensors",
        data=lambda w: SEG_DATASETS[w.dataset]["predict"][w.set],
    output:
        csv=f"{SEG_DIR}/{{dataset}}/predictions/{{set}}/uncertainty.csv",
        info=f"{SEG_DIR}/{{dataset}}/predictions/{{set}}/predict.json",
    log:
        f"{RESULTS}/logs/segment/predict_{{dataset}}_{{set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/predict_{{dataset}}_{{set}}.tsv"
    params:
        model=lambda w: f"{SEG_DIR}/{w.dataset}/model",
        out=lambda w: f"{SEG_DIR}/{w.dataset}/predictions/{w.set}",
        sampling=_seg_predict_args,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{BIOCNN} segment predict --model {params.model} --input {input.data:q} --out {params.out} "
        "{params.sampling} > {log} 2>&1"


rule segment_evaluate:
    """Dice, HD95, error-detection AUROC, Spearman (score vs 1 - Dice), ECE."""
    input:
        csv=f"{SEG_DIR}/{{dataset}}/predict/uncertainty.csv",
        data=seg_data("test"),
    output:
        f"{SEG_DIR}/{{dataset}}/evaluate/metrics.json",
    log:
        f"{RESULTS}/logs/segment/evaluate_{{dataset}}.log",
    params:
        pred=lambda w: f"{SEG_DIR}/{w.dataset}/predict",
        labels=lambda w: SEG_DATASETS[w.dataset]["test"],
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{BIOCNN} segment evaluate --pred {params.pred} --labels {params.labels:q} --out {output} > {log} 2>&1"


rule segment_report:
    """Figures (score vs error, most uncertain overlay) and summary.json for the HTML report."""
    input:
        metrics=expand(f"{SEG_DIR}/{{dataset}}/evaluate/metrics.json", dataset=SEG_DATASETS),
        csv=expand(f"{SEG_DIR}/{{dataset}}/predict/uncertainty.csv", dataset=SEG_DATASETS),
    output:
        f"{SEG_DIR}/report/summary.json",
    log:
        f"{RESULTS}/logs/segment/report.log",
    params:
        args=" ".join(
            f"--name {d} --metrics {SEG_DIR}/{d}/evaluate/metrics.json --pred {SEG_DIR}/{d}/predict" for d in SEG_DATASETS
        ),
        out=f"{SEG_DIR}/report",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{BIOCNN} segment report {params.args} --out {params.out} > {log} 2>&1"
