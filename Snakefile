# onepass: the paper's population study as a Snakemake workflow (config/README.md describes the config).
#   quick study:  snakemake --profile profiles/local --configfile config/quick.yaml
#   full study:   snakemake --profile profiles/slurm all
#   report:       snakemake --report results/<study>/report.html  (with the study's --configfile)
from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/appendix.smk"


# Per-dataset outputs (each depends on the dataset's runs), and every training job's chunk plan and every
# deleted run's records (so that a deleted run is remade: see study_runs); planning it logs what the study
# asks for (runs, jobs, CPU- and GPU-hours).
rule all:
    default_target: True
    input:
        plan_notice,
        study_runs,
        rules.paper_tables.output,
        expand(rules.analysis_page.output, dataset=DATASETS),
        expand(rules.figure.output.svg, dataset=DATASETS, figure=figures.KINDS),
        expand(rules.appendix_figure.output.svg, part=APPENDIX_PARTS),
        rules.quality_direct_figure.output.svg if "quality" in APPENDIX_PARTS else [],
        PAPER_TARGETS,
    localrule: True
