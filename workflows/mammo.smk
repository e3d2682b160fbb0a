# mammo workflow: synth (demo) -> train -> evaluate -> score -> report. See docs/mammography.md.
# Config (configs/demo.yaml, key `mammo`): train_exams, heldout_exams, seed, config (the
# training YAML), heldout_tomo (tomosynthesis volumes among the held-out files; a 2D model
# lists them as failures with the reason).
MAMMO = config.get("mammo", {})
MAMMO_DIR = f"{RESULTS}/mammo"
MAMMO_SEED = MAMMO.get("seed", 11)

MAMMO_TARGETS = (
    [
        f"{MAMMO_DIR}/report/summary.json",
        f"{MAMMO_DIR}/score/summary.json",
    ]
    if task_enabled("mammo")
    else []
)


rule mammo_synth_train:
    """Generated four-view MG DICOM exams for training (patient-level split inside)."""
    output:
        f"{MAMMO_DIR}/synth/train/manifest.csv",
    log:
        f"{RESULTS}/logs/mammo/synth_train.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/synth_train.tsv"
    params:
        out=f"{MAMMO_DIR}/synth/train",
        exams=MAMMO.get("train_exams", 100),
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "{BIOCNN} mammo synth --out {params.out} --exams {params.exams} --seed {MAMMO_SEED} --tomo 0 > {log} 2>&1"


rule mammo_synth_heldout:
    """Held-out exams (another seed) for evaluation and for the clinicians' scoring run."""
    output:
        f"{MAMMO_DIR}/synth/heldout/manifest.csv",
    log:
        f"{RESULTS}/logs/mammo/synth_heldout.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/synth_heldout.tsv"
    params:
        out=f"{MAMMO_DIR}/synth/heldout",
        exams=MAMMO.get("heldout_exams", 30),
        tomo=MAMMO.get("heldout_tomo", 2),
        seed=MAMMO_SEED + 1000,
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{BIOCNN} mammo synth --out {params.out} --exams {params.exams} --seed {params.seed} "
        "--tomo {params.tomo} > {log} 2>&1"


rule mammo_train:
    """The view classifier (shared 2D backbone + classification head), val AUC monitored."""
    input:
        manifest=f"{MAMMO_DIR}/synth/train/manifest.csv",
        config=task_config("mammo", repo_path(MAMMO.get("config", "configs/mammo_demo.yaml"))),
    output:
        weights=f"{MAMMO_DIR}/model/weights.safetensors",
        config=f"{MAMMO_DIR}/model/config.json",
        operating_point=f"{MAMMO_DIR}/model/operating_point.json",
    log:
        f"{RESULTS}/logs/mammo/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/train.tsv"
    params:
        out=f"{MAMMO_DIR}/model",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=TRAIN_GPUS,
    shell:
        "{BIOCNN_TRAIN} mammo train --config {input.config} --manifest {input.manifest} --out {params.out} "
        "--resume > {log} 2>&1"


rule mammo_evaluate:
    """AUC (95% CI), sens/spec at 90%, ECE, ROC and reliability PNGs, Grad-CAM pointing game."""
    input:
        model=f"{MAMMO_DIR}/model/weights.safetensors",
        manifest=f"{MAMMO_DIR}/synth/heldout/manifest.csv",
    output:
        metrics=f"{MAMMO_DIR}/evaluate/metrics.json",
        roc=f"{MAMMO_DIR}/evaluate/roc.png",
        reliability=f"{MAMMO_DIR}/evaluate/reliability.png",
    log:
        f"{RESULTS}/logs/mammo/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/evaluate.tsv"
    params:
        model=f"{MAMMO_DIR}/model",
        out=f"{MAMMO_DIR}/evaluate",
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{BIOCNN} mammo evaluate --model {params.model} --manifest {input.manifest} --out {params.out} "
        "> {log} 2>&1"


rule mammo_score:
    """Clinicians' batch scoring of the held-out folder: scores, exams, failures, heatmaps."""
    input:
        model=f"{MAMMO_DIR}/model/weights.safetensors",
        folder=f"{MAMMO_DIR}/synth/heldout/manifest.csv",
    output:
        summary=f"{MAMMO_DIR}/score/summary.json",
        scores=f"{MAMMO_DIR}/score/scores.csv",
        exams=f"{MAMMO_DIR}/score/exams.csv",
        failures=f"{MAMMO_DIR}/score/failures.csv",
    log:
        f"{RESULTS}/logs/mammo/score.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/score.tsv"
    params:
        model=f"{MAMMO_DIR}/model",
        folder=f"{MAMMO_DIR}/synth/heldout/dicom",
        out=f"{MAMMO_DIR}/score",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{BIOCNN} mammo score --model {params.model} --input {params.folder} --out {params.out} "
        "--heatmaps --workers {threads} > {log} 2>&1"


rule mammo_report:
    """Figures and headline metrics for the HTML report."""
    input:
        metrics=f"{MAMMO_DIR}/evaluate/metrics.json",
        scores=f"{MAMMO_DIR}/score/summary.json",
    output:
        f"{MAMMO_DIR}/report/summary.json",
    log:
        f"{RESULTS}/logs/mammo/report.log",
    params:
        evaluation=f"{MAMMO_DIR}/evaluate",
        scores=f"{MAMMO_DIR}/score",
        out=f"{MAMMO_DIR}/report",
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{BIOCNN} mammo report --evaluation {params.evaluation} --scores {params.scores} --out {params.out} "
        "> {log} 2>&1"
