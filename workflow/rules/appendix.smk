# The paper's appendix studies (onepass.appendix), when the config's `appendix` asks for them.
# Sensitivity: one job per (algorithm, cell) trains the cell's population from its plan with onepass.train,
# as the study's own chunks; a table of medians and the heatmaps follow. Hypergradient quality: one job
# (onepass.quality) takes the first hyperparameter step of matched runs of the paper's method and
# Diff-through-Opt in every cell (the paper's quantity and figure), and steps a population of the paper's
# method beside the exact hypergradient (this project's own comparison, a second figure).


rule sensitivity_plan:
    output:
        f"{APPENDIX}/sensitivity/plans/{{algorithm}}/{{cell}}.json",
    log:
        f"{APPENDIX}/logs/sensitivity/plans/{{algorithm}}/{{cell}}.log",
    localrule: True
    params:
        plan=lambda wildcards: json.dumps(
            appendix.cell_plan(CONFIG, wildcards.algorithm, wildcards.cell),
            indent=1,
            sort_keys=True,
        ),
    run:
        Path(output[0]).write_text(f"{params.plan}\n")
        Path(log[0]).write_text(f"wrote {output[0]}\n")


# One rule per (algorithm, cell), generated for the reason of train.smk's: a cell's outputs are the runs of
# a list of seeds, which no wildcard pattern can name without a job per seed.
for algorithm, cell in SENSITIVITY_CELLS:
    resources_of = appendix.cell_resources(CONFIG, algorithm, cell)
    cell_dataset = appendix.spec(CONFIG, "sensitivity")["dataset"]

    rule:
        name:
            f"sensitivity_{algorithm}_{cell}"
        input:
            data=ancient(
                expand(
                    rules.prepare_data.output[0],
                    base=catalog.dataset(cell_dataset).base,
                )
            ),
            plan=expand(
                rules.sensitivity_plan.output[0], algorithm=algorithm, cell=cell
            ),
        output:
            record=cell_record(algorithm, cell),
            metrics=appendix.cell_metrics(CONFIG, algorithm, cell),
        log:
            f"{APPENDIX}/logs/sensitivity/{algorithm}/{cell}.log",
        benchmark:
            f"{APPENDIX}/benchmarks/sensitivity/{algorithm}/{cell}.tsv"
        conda:
            "../../envs/onepass.yaml"
        threads: resources_of["threads"]
        resources:
            mem_mb=lambda wildcards, attempt, m=resources_of["mem_mb"]: m * attempt,
            runtime=lambda wildcards, attempt, r=resources_of["runtime"]: r * attempt,
            gpu=resources_of["gpu"],
        params:
            runs_dir=lambda wildcards, output: str(
                Path(output.metrics[0]).parent.parent
            ),
            data_dir=lambda wildcards, input: str(Path(input.data[0]).parent.parent),
            device=job_device,
        shell:
            "python -m onepass.train --plan {input.plan} --runs-dir {params.runs_dir}"
            " --data-dir {params.data_dir} --device {params.device} --threads {threads}"
            " --mem-mb {resources.mem_mb} --quiet > {log} 2>&1 && cp {input.plan} {output.record}"


rule sensitivity_table:
    input:
        [cell_record(algorithm, cell) for algorithm, cell in SENSITIVITY_CELLS],
    output:
        f"{APPENDIX}/sensitivity/sensitivity.tsv",
    log:
        f"{APPENDIX}/logs/sensitivity/table.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        config=lambda wildcards: json.dumps(
            appendix.part_config(CONFIG, "sensitivity"), sort_keys=True
        ),
    shell:
        "python -m onepass.appendix sensitivity-table --config {params.config:q}"
        " --out {output} > {log} 2>&1"


# the quality job's resources, from the same estimates as training (the rule exists, unused, without it)
QUALITY_RESOURCES = (
    appendix.quality_resources(CONFIG)
    if appendix.enabled(CONFIG, "quality")
    else {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0}
)


rule hypergradient_quality:
    input:
        data=lambda wildcards: ancient(
            expand(
                rules.prepare_data.output[0],
                base=catalog.dataset(appendix.spec(CONFIG, "quality")["dataset"]).base,
            )
        ),
    output:
        updates=f"{APPENDIX}/quality/updates.tsv",
        paper=f"{APPENDIX}/quality/quality.tsv",
        members=f"{APPENDIX}/quality/hypergradients.tsv",
        summary=f"{APPENDIX}/quality/direct.tsv",
    log:
        f"{APPENDIX}/logs/quality.log",
    benchmark:
        f"{APPENDIX}/benchmarks/quality.tsv"
    conda:
        "../../envs/onepass.yaml"
    threads: QUALITY_RESOURCES["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: QUALITY_RESOURCES["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: QUALITY_RESOURCES["runtime"] * attempt,
        gpu=QUALITY_RESOURCES["gpu"],
    params:
        config=lambda wildcards: json.dumps(
            appendix.part_config(CONFIG, "quality"), sort_keys=True
        ),
        data_dir=lambda wildcards, input: str(Path(input.data[0]).parent.parent),
        device=job_device,
    shell:
        "python -m onepass.quality --config {params.config:q} --data-dir {params.data_dir}"
        " --device {params.device} --threads {threads} --updates {output.updates}"
        " --paper {output.paper} --members {output.members} --summary {output.summary}"
        " > {log} 2>&1"


APPENDIX_TABLES = {
    "sensitivity": rules.sensitivity_table.output[0],
    "quality": rules.hypergradient_quality.output.paper,
}


# The heatmaps of either study, from its table, with the caption onepass.heatmaps gives it.
rule appendix_figure:
    input:
        lambda wildcards: APPENDIX_TABLES[wildcards.part],
    output:
        png=report(
            f"{APPENDIX}/figures/{{part}}.png",
            caption="../report/figure.rst",
            category="Appendix",
            labels={"study": "{part}", "item": "heatmaps"},
        ),
        svg=f"{APPENDIX}/figures/{{part}}.svg",
    log:
        f"{APPENDIX}/logs/figures/{{part}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        dataset=lambda wildcards: appendix.spec(CONFIG, wildcards.part)["dataset"],
        caption=lambda wildcards: heatmaps.caption(
            wildcards.part, appendix.spec(CONFIG, wildcards.part)["dataset"]
        ),
    shell:
        "python -m onepass.heatmaps {wildcards.part} --table {input} --dataset {params.dataset}"
        " --out {output.png} {output.svg} > {log} 2>&1"


# This project's own comparison of the hypergradients (cosine similarity, norm ratio), beside the paper's.
rule quality_direct_figure:
    input:
        rules.hypergradient_quality.output.summary,
    output:
        png=report(
            f"{APPENDIX}/figures/quality_direct.png",
            caption="../report/figure.rst",
            category="Appendix",
            labels={
                "study": "quality (this project's comparison)",
                "item": "heatmaps",
            },
        ),
        svg=f"{APPENDIX}/figures/quality_direct.svg",
    log:
        f"{APPENDIX}/logs/figures/quality_direct.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        dataset=lambda wildcards: appendix.spec(CONFIG, "quality")["dataset"],
        caption=lambda wildcards: heatmaps.caption(
            "quality_direct", appendix.spec(CONFIG, "quality")["dataset"]
        ),
    shell:
        "python -m onepass.heatmaps quality_direct --table {input} --dataset {params.dataset}"
        " --out {output.png} {output.svg} > {log} 2>&1"
