# onepass: the paper's population study as a Snakemake workflow.
#   quick study:  snakemake --profile profiles/local --configfile config/quick.yaml
#   full study:   snakemake --profile profiles/slurm all
#   report:       snakemake --report results/report.html  (with the run's --configfile)
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


rule all:
    input:
        all_targets(),
    default_target: True
    localrule: True
