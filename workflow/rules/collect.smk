# runs.tsv of a dataset: one row per planned run (its status: done, diverged, stale or missing) after a
# status line. A run whose recorded settings or initialisation differ from the plan is stale: reported,
# and left out of every statistic.
rule collect:
    input:
        plan=rules.sweep.output.plan,
        chunks=dataset_chunks,
    output:
        f"{STUDY}/tables/{{dataset}}/runs.tsv",
    log:
        f"{STUDY}/logs/collect/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        runs_dir=runs_dir,
    shell:
        "python -m onepass.analysis collect --plan {input.plan} --runs-dir {params.runs_dir}"
        " --out {output} > {log} 2>&1"
