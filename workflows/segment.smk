# segment workflow: synth (demo) -> train -> predict (MC dropout) -> evaluate -> report, for the
# malaria (2D) and tumor (3D) configs. See docs/segmentation.md.
# Config (configs/demo.yaml, key `segment`): kinds, seed, mc_samples, and per kind: config
# (the training YAML), train_n, test_n, size, tta, epochs (overrides the YAML's train.epochs).
SEGMENT = config.get("segment", {})
SEG_DIR = f"{RESULTS}/segment"
SEG_KINDS = SEGMENT.get("kinds", ["malaria", "tumor"])
SEG_SEED = SEGMENT.get("seed", 7)
_SEG_DEFAULTS = {
    "malaria": {"config": "configs/segment_malaria.yaml", "train_n": 24, "test_n": 8, "size": 128, "tta": False, "epochs": None},
    "tumor": {"config": "configs/segment_tumor.yaml", "train_n": 12, "test_n": 4, "size": 48, "tta": False, "epochs": None},
}


def seg_opt(kind, key):
    """A per-kind setting from the workflow config, else the default above."""
    return SEGMENT.get(kind, {}).get(key, _SEG_DEFAULTS[kind][key])


SEGMENT_TARGETS = [f"{SEG_DIR}/report/summary.json"] if task_enabled("segment") else []
for _kind in SEG_KINDS:  # each kind's training YAML, checked now (see task_config)
    task_config("segment", repo_path(seg_opt(_kind, "config")))

wildcard_constraints:
    kind="malaria|tumor",
    split="train|test",


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
        cases=f"{SEG_DIR}/{{kind}}/train/cases.txt",
        config=lambda w: repo_path(seg_opt(w.kind, "config")),
    output:
        weights=f"{SEG_DIR}/{{kind}}/model/weights.safetensors",
        config=f"{SEG_DIR}/{{kind}}/model/config.json",
    log:
        f"{RESULTS}/logs/segment/train_{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/train_{{kind}}.tsv"
    params:
        data=lambda w: f"{SEG_DIR}/{w.kind}/train",
        out=lambda w: f"{SEG_DIR}/{w.kind}/model",
        epochs=lambda w: f"--epochs {seg_opt(w.kind, 'epochs')}" if seg_opt(w.kind, "epochs") else "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    shell:
        "{BIOCNN_TRAIN} segment train --config {input.config} --train {params.data} --out {params.out} "
        "{params.epochs} --resume > {log} 2>&1"


rule segment_predict:
    """Sliding-window prediction with T Monte Carlo dropout samples: labels, probabilities,
    entropy, mutual information, overlays, uncertainty.csv (review score, flag, components)."""
    input:
        weights=f"{SEG_DIR}/{{kind}}/model/weights.safetensors",
        cases=f"{SEG_DIR}/{{kind}}/test/cases.txt",
    output:
        csv=f"{SEG_DIR}/{{kind}}/predict/uncertainty.csv",
        info=f"{SEG_DIR}/{{kind}}/predict/predict.json",
    log:
        f"{RESULTS}/logs/segment/predict_{{kind}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/predict_{{kind}}.tsv"
    params:
        model=lambda w: f"{SEG_DIR}/{w.kind}/model",
        data=lambda w: f"{SEG_DIR}/{w.kind}/test",
        out=lambda w: f"{SEG_DIR}/{w.kind}/predict",
        mc=SEGMENT.get("mc_samples", 20),
        tta=lambda w: "--tta" if seg_opt(w.kind, "tta") else "",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{BIOCNN} segment predict --model {params.model} --input {params.data} --out {params.out} "
        "--mc-samples {params.mc} {params.tta} > {log} 2>&1"


rule segment_evaluate:
    """Dice, HD95, error-detection AUROC, Spearman (score vs 1 - Dice), ECE."""
    input:
        csv=f"{SEG_DIR}/{{kind}}/predict/uncertainty.csv",
        cases=f"{SEG_DIR}/{{kind}}/test/cases.txt",
    output:
        f"{SEG_DIR}/{{kind}}/evaluate/metrics.json",
    log:
        f"{RESULTS}/logs/segment/evaluate_{{kind}}.log",
    params:
        pred=lambda w: f"{SEG_DIR}/{w.kind}/predict",
        labels=lambda w: f"{SEG_DIR}/{w.kind}/test",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{BIOCNN} segment evaluate --pred {params.pred} --labels {params.labels} --out {output} > {log} 2>&1"


rule segment_report:
    """Figures (score vs error, most uncertain overlay) and summary.json for the HTML report."""
    input:
        metrics=expand(f"{SEG_DIR}/{{kind}}/evaluate/metrics.json", kind=SEG_KINDS),
        csv=expand(f"{SEG_DIR}/{{kind}}/predict/uncertainty.csv", kind=SEG_KINDS),
    output:
        f"{SEG_DIR}/report/summary.json",
    log:
        f"{RESULTS}/logs/segment/report.log",
    params:
        args=" ".join(f"--name {k} --metrics {SEG_DIR}/{k}/evaluate/metrics.json --pred {SEG_DIR}/{k}/predict"
                      for k in SEG_KINDS),
        out=f"{SEG_DIR}/report",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{BIOCNN} segment report {params.args} --out {params.out} > {log} 2>&1"
