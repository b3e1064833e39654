# The sweep as data: per dataset, the initialisation of every seed, a summary of what was drawn, and the
# plan of its runs (every algorithm's seeds, settings and per-seed initialisations), from which each
# training job writes its chunk's plan, and against which collection checks the runs. A dataset whose sampler takes values from the
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
            study.dataset_config(CONFIG, wildcards.dataset), sort_keys=True
        ),
        out_dir=lambda wildcards, output: str(Path(output.plan).parent),
        data_dir=DATA,
        mirrors=MIRRORS,
    shell:
        "python -m onepass.study sweep --config {params.config:q} --dataset {wildcards.dataset}"
        " --out-dir {params.out_dir} --data-dir {params.data_dir} {params.mirrors} > {log} 2>&1"
