rule figure:
    input:
        "results/tables/{dataset}/runs.tsv",
    output:
        png=report(
            "results/figures/{dataset}/{figure}.png",
            caption="../report/figure.rst",
            category="{dataset}",
            subcategory="Figures",
            labels={"dataset": "{dataset}", "algorithm": "all", "figure": "{figure}"},
        ),
        svg="results/figures/{dataset}/{figure}.svg",
    params:
        runs_dir=runs_dir,
    log:
        "results/logs/figures/{dataset}/{figure}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis figure --kind {wildcards.figure} --runs {input}"
        " --runs-dir {params.runs_dir} --out {output.png} {output.svg} > {log} 2>&1"
