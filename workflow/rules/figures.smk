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


# ---- the paper's outputs that gather runs across datasets (onepass.paper_studies, onepass.paper_figures) ----
from onepass import paper_figures, paper_studies

# Each is made for the datasets of its list in the config's paper_figures that the study has: the
# validation-proportion table, the proof of concept, and per dataset the learning rates of one seed, the run
# durations, the best test metric over time and the test-error CDFs.
paper_studies.check(CONFIG, SOURCES)
PAPER = {kind: paper_studies.datasets(CONFIG, kind) for kind in paper_studies.KINDS}
PAPER_PER_DATASET = ("learning_rates", "runtimes", "best_over_time", "error_cdfs")
# the proof of concept's heatmap and trajectories: {dataset, algorithm} each
CONCEPT = paper_studies.spec(CONFIG, "proof_of_concept") or {}


rule validation_proportion_table:
    input:
        expand(rules.summary_table.output.tsv, dataset=PAPER["validation_proportion"]),
    output:
        markdown=f"{STUDY}/tables/validation_proportion.md",
        tsv=f"{STUDY}/tables/validation_proportion.tsv",
        html=report(
            f"{STUDY}/tables/validation_proportion.html",
            caption="../report/validation_proportion.rst",
            category="Paper studies",
            labels={"study": "validation proportion", "item": "table"},
        ),
    log:
        f"{STUDY}/logs/tables/validation_proportion.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        algorithms=lambda wildcards: paper_studies.spec(
            CONFIG, "validation_proportion"
        )["algorithms"],
    shell:
        "python -m onepass.paper_studies validation-table --summaries {input}"
        " --algorithms {params.algorithms} --markdown {output.markdown} --tsv {output.tsv}"
        " --html {output.html} > {log} 2>&1"


rule proof_of_concept_figure:
    input:
        heatmap=lambda wildcards: expand(
            rules.collect.output[0], dataset=CONCEPT["heatmap"]["dataset"]
        ),
        trajectories=lambda wildcards: expand(
            rules.collect.output[0], dataset=CONCEPT["trajectories"]["dataset"]
        ),
        chunks=lambda wildcards: dataset_chunk_records(
            CONCEPT["trajectories"]["dataset"]
        ),
    output:
        png=report(
            f"{STUDY}/figures/paper/proof_of_concept.png",
            caption="../report/figure.rst",
            category="Paper studies",
            labels={"study": "proof of concept", "item": "heatmap"},
        ),
        svg=f"{STUDY}/figures/paper/proof_of_concept.svg",
    log:
        f"{STUDY}/logs/figures/paper/proof_of_concept.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        heatmap_algorithm=lambda wildcards: CONCEPT["heatmap"]["algorithm"],
        trajectory_algorithm=lambda wildcards: CONCEPT["trajectories"]["algorithm"],
        trajectory_runs_dir=lambda wildcards: study.runs_dir(
            CONFIG, CONCEPT["trajectories"]["dataset"]
        ),
        trajectories=lambda wildcards: CONCEPT["count"],
        caption=lambda wildcards: paper_figures.caption(
            "proof_of_concept",
            CONCEPT["heatmap"]["dataset"],
            count=CONCEPT["count"],
            trajectory=CONCEPT["trajectories"]["algorithm"],
        ),
    shell:
        "python -m onepass.paper_figures proof_of_concept --heatmap-runs {input.heatmap}"
        " --heatmap-algorithm {params.heatmap_algorithm} --trajectory-runs {input.trajectories}"
        " --trajectory-runs-dir {params.trajectory_runs_dir}"
        " --trajectory-algorithm {params.trajectory_algorithm} --count {params.trajectories}"
        " --out {output.png} {output.svg} > {log} 2>&1"


rule paper_figure:
    input:
        runs=rules.collect.output[0],
        chunks=dataset_chunks,
    output:
        png=report(
            f"{STUDY}/figures/{{dataset}}/{{paper_kind}}.png",
            caption="../report/figure.rst",
            category="{dataset}",
            subcategory="Figures",
            labels={"dataset": "{dataset}", "item": "{paper_kind}"},
        ),
        svg=f"{STUDY}/figures/{{dataset}}/{{paper_kind}}.svg",
    log:
        f"{STUDY}/logs/figures/{{dataset}}/{{paper_kind}}.log",
    wildcard_constraints:
        paper_kind="|".join(PAPER_PER_DATASET),
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        options=lambda wildcards: paper_studies.figure_options(
            CONFIG, wildcards.paper_kind, wildcards.dataset
        ),
        caption=lambda wildcards: paper_studies.figure_caption(
            CONFIG, wildcards.paper_kind, wildcards.dataset
        ),
    shell:
        "python -m onepass.paper_figures {wildcards.paper_kind} --runs {input.runs} {params.options}"
        " --out {output.png} {output.svg} > {log} 2>&1"


# every output of the paper's cross-dataset studies this study makes (a target of rule all)
PAPER_TARGETS = [
    *(
        rules.validation_proportion_table.output
        if PAPER["validation_proportion"]
        else []
    ),
    *(rules.proof_of_concept_figure.output if PAPER["proof_of_concept"] else []),
    *(
        path
        for kind in PAPER_PER_DATASET
        for dataset in PAPER[kind]
        for path in expand(rules.paper_figure.output, dataset=dataset, paper_kind=kind)
    ),
]
