rule collect:
    input:
        run_metrics,
    output:
        "results/tables/{dataset}/runs.tsv",
    params:
        runs_dir=runs_dir,
        algorithms=dataset_algorithms,
        seeds=n_initialisations,
    log:
        "results/logs/collect/{dataset}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.analysis collect --dataset {wildcards.dataset}"
        " --runs-dir {params.runs_dir} --algorithms {params.algorithms} --seeds {params.seeds}"
        " --out {output} > {log} 2>&1"
