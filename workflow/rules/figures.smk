# Every figure kind of onepass.figures for every dataset, as PNG (in the report, with the caption the
# figures module gives it) and SVG. A figure reads runs.tsv and the runs' histories (which come with their
# chunks' plans).
rule figure:
    input:
        runs=rules.collect.output[0],
        chunks=dataset_chunks,
    output:
        png=report(
            f"{STUDY}/figures/{{dataset}}/{{figure}}.png",
            caption="../report/figure.rst",
            category="{dataset}",
            subcategory="Figures",
            labels={"dataset": "{dataset}", "item": "{figure}"},
        ),
        svg=f"{STUDY}/figures/{{dataset}}/{{figure}}.svg",
    log:
        f"{STUDY}/logs/figures/{{dataset}}/{{figure}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        runs_dir=runs_dir,
        caption=figure_caption,
    shell:
        "python -m onepass.analysis figure --kind {wildcards.figure} --runs {input.runs}"
        " --runs-dir {params.runs_dir} --out {output.png} {output.svg} > {log} 2>&1"
