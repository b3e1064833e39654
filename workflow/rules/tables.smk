rule summary_table:
    input:
        "results/tables/{dataset}/runs.tsv",
    output:
        report(
            "results/tables/{dataset}/summary.tsv",
            caption="../report/summary.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"dataset": "{dataset}", "algorithm": "all", "figure": "summary table"},
        ),
    log:
        "results/logs/tables/{dataset}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis summary --runs {input} --out {output} > {log} 2>&1"


rule paper_tables:
    input:
        all_summaries,
    output:
        markdown=report(
            "results/tables/paper_tables.md",
            caption="../report/paper_tables.rst",
            category="Paper tables",
            labels={"dataset": "all", "algorithm": "all", "figure": "paper tables"},
        ),
        tsv="results/tables/paper_tables.tsv",
    log:
        "results/logs/tables/paper_tables.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis paper-tables --summaries {input}"
        " --markdown {output.markdown} --tsv {output.tsv} > {log} 2>&1"
