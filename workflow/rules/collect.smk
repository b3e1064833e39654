# runs.tsv of a dataset: every algorithm's seeds, fewer for those capped by the config key
# repetitions (the black-box searches), which are then not counted as missing beyond them.
rule collect:
    input:
        run_metrics,
    output:
        "results/tables/{dataset}/runs.tsv",
    params:
        runs_dir=runs_dir,
        algorithms=dataset_algorithms,
        seeds=n_initialisations,
        repetitions=dataset_repetitions,
    log:
        "results/logs/collect/{dataset}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis collect --dataset {wildcards.dataset}"
        " --runs-dir {params.runs_dir} --algorithms {params.algorithms} --seeds {params.seeds}"
        " {params.repetitions} --out {output} > {log} 2>&1"
