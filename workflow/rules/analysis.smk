rule analysis_page:
    input:
        runs="results/tables/{dataset}/runs.tsv",
        summary="results/tables/{dataset}/summary.tsv",
        sweep="results/sweep/{dataset}/summary.tsv",
        figures=dataset_figures,
    output:
        report(
            "results/analysis/{dataset}.html",
            caption="../report/analysis.rst",
            category="{dataset}",
            subcategory="Analysis page",
            labels={"dataset": "{dataset}", "algorithm": "all", "figure": "analysis page"},
        ),
    params:
        runs_dir=runs_dir,
    log:
        "results/logs/analysis/{dataset}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis page --dataset {wildcards.dataset} --runs {input.runs}"
        " --summary {input.summary} --sweep-summary {input.sweep} --figures {input.figures}"
        " --runs-dir {params.runs_dir} --out {output} > {log} 2>&1"
