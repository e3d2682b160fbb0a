# biocnn workflows. `snakemake --cores all` runs the whole demo on generated data and ends
# with one self-contained HTML report: results/demo/report.html.
# Another config: `snakemake --cores all --configfile configs/my_run.yaml`.
# On a SLURM cluster: `snakemake --profile configs/profiles/slurm` (see docs/workflows.md).
import shutil
import sys

# The demo is the default config (relative to the Snakefile, so `--directory elsewhere` still
# finds it). A --configfile replaces it rather than being merged into it: a user's config runs
# what it names and nothing of the demo's (`--config key=value` alone still edits the demo).
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/configs/demo.yaml"


include: "workflows/common.smk"
include: "workflows/mammo.smk"
include: "workflows/segment.smk"
include: "workflows/deepbind.smk"

TASK_TARGETS = MAMMO_TARGETS + SEGMENT_TARGETS + DEEPBIND_TARGETS

# The browser check needs headless Chromium; without it the report is still built.
BROWSER_CHECK = config.get("browser_check", True) and any(
    shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome"))
if config.get("browser_check", True) and not BROWSER_CHECK:
    print("biocnn: Chromium not found; the report will not be checked in a browser", file=sys.stderr)


# The task targets are requested here as well as by the report: Snakemake re-creates a deleted
# file only when something requests it, so deleting one of them re-runs its job and then,
# through modification times, everything downstream of it, and nothing upstream.
rule all:
    default_target: True
    input:
        TASK_TARGETS,
        f"{RESULTS}/report.html",
        [f"{RESULTS}/report_screenshot.png"] if BROWSER_CHECK else [],


rule report:
    """One HTML file with every task's metrics, figures and model provenance."""
    input:
        rules.environment.output,
        TASK_TARGETS,
    output:
        f"{RESULTS}/report.html",
    log:
        f"{RESULTS}/logs/report.log",
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tasks=" ".join(config["tasks"]),
        title=config.get("title", "biocnn report"),
    shell:
        "{BIOCNN} report build --results {RESULTS} --out {output} --tasks {params.tasks} --title {params.title:q} "
        "> {log} 2>&1"


rule report_browser_check:
    """Render the report in headless Chromium; fails if any image does not load."""
    input:
        f"{RESULTS}/report.html",
    output:
        screenshot=f"{RESULTS}/report_screenshot.png",
        counts=f"{RESULTS}/report_images.json",
    log:
        f"{RESULTS}/logs/report_browser_check.log",
    resources:
        mem_mb=2000,
        runtime=5,
    shell:
        "{BIOCNN} report check --report {input} --screenshot {output.screenshot} --out {output.counts} > {log} 2>&1"
