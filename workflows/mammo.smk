# mammo workflow: data -> train -> evaluate -> score -> report. See docs/mammography.md.
# Config (key `mammo`, schema in workflows/schemas/config.schema.yaml): config (the training
# YAML), label_column (the manifests' target column), and either
#   the demo: train_exams, heldout_exams, heldout_tomo, seed (generated exams; the held-out
#     folder, tomosynthesis volumes included, is evaluated and scored), or
#   your data: train (manifest CSV), test (manifest CSV, optional: evaluated and scored).
# Either way, `score: {name: folder or manifest}` scores each into scores/<name>/.
import shlex

MAMMO = config.get("mammo", {})
MAMMO_DIR = f"{RESULTS}/mammo"
MAMMO_SEED = MAMMO.get("seed", 11)
MAMMO_DEMO = not MAMMO.get("train") and not MAMMO.get("test")
# Passed only when set here: otherwise training reads the training YAML's data.label_column and
# evaluation the column the model was trained on.
MAMMO_LABEL = f"--label-column {shlex.quote(MAMMO['label_column'])}" if MAMMO.get("label_column") else ""
MAMMO_SCORE = MAMMO.get("score", {})


def mammo_manifest(split):
    """The training or test manifest: the config's, or the generated one in the demo (None: no
    test set, so no evaluation)."""
    given = MAMMO.get(split)
    if given:
        return repo_path(given)
    if split == "train":
        return f"{MAMMO_DIR}/synth/train/manifest.csv"
    return f"{MAMMO_DIR}/synth/heldout/manifest.csv" if MAMMO_DEMO else None


MAMMO_TEST = mammo_manifest("test")
MAMMO_TARGETS = []
if task_enabled("mammo"):
    MAMMO_TARGETS += [f"{MAMMO_DIR}/report/summary.json", f"{MAMMO_DIR}/score/summary.json"] if MAMMO_TEST else []
    MAMMO_TARGETS += expand(f"{MAMMO_DIR}/scores/{{name}}/summary.json", name=MAMMO_SCORE)
    if not MAMMO_TARGETS:
        raise WorkflowError("mammo: nothing to do: give a test manifest (mammo.test) or folders to score (mammo.score)")

wildcard_constraints:
    name="[A-Za-z0-9][A-Za-z0-9_.-]*",  # as the config schema requires of set names


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
        manifest=mammo_manifest("train"),
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
        "{BIOCNN_TRAIN} mammo train --config {input.config:q} --manifest {input.manifest:q} {MAMMO_LABEL} "
        "--out {params.out} --resume > {log} 2>&1"


rule mammo_evaluate:
    """AUC (95% CI), sens/spec at 90%, ECE, ROC and reliability PNGs, Grad-CAM pointing game."""
    input:
        model=f"{MAMMO_DIR}/model/weights.safetensors",
        manifest=MAMMO_TEST or [],
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
        "{BIOCNN} mammo evaluate --model {params.model} --manifest {input.manifest:q} {MAMMO_LABEL} --out {params.out} "
        "> {log} 2>&1"


rule mammo_score:
    """Clinicians' batch scoring of the test set (the demo: its held-out folder, tomosynthesis
    volumes included): scores, exams, failures, heatmaps; the report shows this run."""
    input:
        model=f"{MAMMO_DIR}/model/weights.safetensors",
        manifest=MAMMO_TEST or [],
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
        folder=lambda wc, input: f"{MAMMO_DIR}/synth/heldout/dicom" if MAMMO_DEMO else input.manifest,
        out=f"{MAMMO_DIR}/score",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=15,
    shell:
        "{BIOCNN} mammo score --model {params.model} --input {params.folder:q} --out {params.out} "
        "--heatmaps --workers {threads} > {log} 2>&1"


rule mammo_score_set:
    """One of the config's named folders (or manifests) of studies, scored for clinicians."""
    input:
        model=f"{MAMMO_DIR}/model/weights.safetensors",
        folder=lambda wc: repo_path(MAMMO_SCORE[wc.name]),
    output:
        summary=f"{MAMMO_DIR}/scores/{{name}}/summary.json",
        scores=f"{MAMMO_DIR}/scores/{{name}}/scores.csv",
        exams=f"{MAMMO_DIR}/scores/{{name}}/exams.csv",
        failures=f"{MAMMO_DIR}/scores/{{name}}/failures.csv",
    log:
        f"{RESULTS}/logs/mammo/score_{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mammo/score_{{name}}.tsv"
    params:
        model=f"{MAMMO_DIR}/model",
        out=f"{MAMMO_DIR}/scores/{{name}}",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{BIOCNN} mammo score --model {params.model} --input {input.folder:q} --out {params.out} "
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
