# biocnn workflows. `snakemake --cores all` runs the whole demo on generated data.
# Another config: `snakemake --cores all --configfile configs/my_run.yaml`.
# On a SLURM cluster: `snakemake --profile configs/profiles/slurm` (see README).

configfile: "configs/demo.yaml"


include: "workflows/common.smk"
include: "workflows/mammo.smk"
include: "workflows/segment.smk"
include: "workflows/deepbind.smk"


rule all:
    default_target: True
    input:
        rules.environment.output,
        MAMMO_TARGETS,
        SEGMENT_TARGETS,
        DEEPBIND_TARGETS,
