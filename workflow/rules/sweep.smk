# The sweep as data: per dataset, the initialisation of every seed, a summary of what was drawn, and the
# plan of its runs (every algorithm's seeds, chunks, settings and per-seed initialisations), which the
# training jobs read and collection checks the runs against. A dataset whose sampler takes values from the
# paper's initialisation files (from_files) fetches them (mirrors first) into the shared data directory.
rule sweep:
    output:
        table=f"{STUDY}/sweep/{{dataset}}/initialisations.tsv",
        summary=f"{STUDY}/sweep/{{dataset}}/summary.tsv",
        plan=f"{STUDY}/sweep/{{dataset}}/plan.json",
    log:
        f"{STUDY}/logs/sweep/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        config=lambda wildcards: json.dumps(
            study.dataset_config(config, wildcards.dataset), sort_keys=True
        ),
        out_dir=lambda wildcards, output: str(Path(output.plan).parent),
        data_dir=DATA,
        mirrors=MIRRORS,
    shell:
        "python -m onepass.study sweep --config {params.config:q} --dataset {wildcards.dataset}"
        " --out-dir {params.out_dir} --data-dir {params.data_dir} {params.mirrors} > {log} 2>&1"


# The chunk plans of a dataset that takes its initial values from the paper's initialisation files
# (sampler type from_files: Penn Treebank and CIFAR-10 by default). Its params hold references to the files
# and their SHA-256s, so a plan is rewritten when its members' files change; the values are read when the
# plan is written, from the files the sweep rule fetched (ancient: a rewritten sweep retrains nothing).
FILE_DATASETS = [d for d in DATASETS if study.takes_files(config, d)]


ruleorder: chunk_plan_from_files > chunk_plan


rule chunk_plan_from_files:
    input:
        ancient(rules.sweep.output.table),
    output:
        f"{STUDY}/sweep/{{dataset}}/chunks/{{algorithm}}/seeds{{first}}-{{last}}.json",
    log:
        f"{STUDY}/logs/sweep/{{dataset}}/{{algorithm}}/seeds{{first}}-{{last}}.log",
    wildcard_constraints:
        dataset=alternatives(FILE_DATASETS),
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        plan=lambda wildcards: json.dumps(
            study.chunk_plan(
                config,
                wildcards.dataset,
                wildcards.algorithm,
                list(range(int(wildcards.first), int(wildcards.last) + 1)),
            ),
            indent=1,
            sort_keys=True,
        ),
        data_dir=DATA,
    shell:
        "python -m onepass.study chunk-plan --plan {params.plan:q} --data-dir {params.data_dir}"
        " --out {output} > {log} 2>&1"


# The plan of one training job: its (dataset, algorithm), settings and members. Its params are exactly
# that content, so a change of a chunk's settings or members rewrites its plan and retrains it, and a change
# elsewhere leaves it alone. (A job is not made to depend on the dataset's plan above: Snakemake would then
# not look at a chunk's own changes whenever that plan is rewritten.)
rule chunk_plan:
    output:
        f"{STUDY}/sweep/{{dataset}}/chunks/{{algorithm}}/seeds{{first}}-{{last}}.json",
    log:
        f"{STUDY}/logs/sweep/{{dataset}}/{{algorithm}}/seeds{{first}}-{{last}}.log",
    localrule: True
    params:
        plan=lambda wildcards: json.dumps(
            study.chunk_plan(
                config,
                wildcards.dataset,
                wildcards.algorithm,
                list(range(int(wildcards.first), int(wildcards.last) + 1)),
            ),
            indent=1,
            sort_keys=True,
        ),
    run:
        Path(output[0]).write_text(params.plan + "\n")
        Path(log[0]).write_text(f"wrote {output[0]}\n")
