# A self-contained population-analysis page per dataset (pycls style): the sweep, the settings, the summary,
# every figure, the best and worst runs.
rule analysis_page:
    input:
        runs=rules.collect.output[0],
        summary=rules.summary_table.output.tsv,
        sweep=rules.sweep.output.summary,
        plan=rules.sweep.output.plan,
        figures=expand(
            rules.figure.output.png, figure=figures.KINDS, allow_missing=True
        ),
    output:
        report(
            f"{STUDY}/analysis/{{dataset}}.html",
            caption="../report/analysis.rst",
            category="{dataset}",
            subcategory="Analysis page",
            labels={"dataset": "{dataset}", "item": "analysis page"},
        ),
    log:
        f"{STUDY}/logs/analysis/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis page --runs {input.runs} --summary {input.summary}"
        " --sweep-summary {input.sweep} --plan {input.plan} --figures {input.figures} --out {output}"
        " > {log} 2>&1"
