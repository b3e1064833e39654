# Per dataset: mean, median (with SEs, by table_statistic) and best final test metric of every algorithm, as TSV
# and as the HTML table the report shows; across datasets: the paper's tables.
rule summary_table:
    input:
        rules.collect.output[0],
    output:
        tsv=f"{STUDY}/tables/{{dataset}}/summary.tsv",
        html=report(
            f"{STUDY}/tables/{{dataset}}/summary.html",
            caption="../report/summary.rst",
            category="{dataset}",
            subcategory="Tables",
            labels={"dataset": "{dataset}", "item": "summary table"},
        ),
    log:
        f"{STUDY}/logs/tables/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        statistic=CONFIG["table_statistic"],
    shell:
        "python -m onepass.analysis summary --runs {input} --out {output.tsv} --html {output.html}"
        " --statistic {params.statistic} > {log} 2>&1"


rule paper_tables:
    input:
        expand(rules.summary_table.output.tsv, dataset=DATASETS),
    output:
        markdown=f"{STUDY}/tables/paper_tables.md",
        tsv=f"{STUDY}/tables/paper_tables.tsv",
        html=report(
            f"{STUDY}/tables/paper_tables.html",
            caption="../report/paper_tables.rst",
            category="Paper tables",
            labels={"dataset": "all", "item": "paper tables"},
        ),
    log:
        f"{STUDY}/logs/tables/paper_tables.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis paper-tables --summaries {input} --markdown {output.markdown}"
        " --tsv {output.tsv} --html {output.html} > {log} 2>&1"
