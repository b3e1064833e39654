rule sweep:
    output:
        table="results/sweep/{dataset}/initialisations.tsv",
        summary="results/sweep/{dataset}/summary.tsv",
    params:
        spec=sweep_spec,
        n=n_initialisations,
    log:
        "results/logs/sweep/{dataset}.log",
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.sweep --spec {params.spec:q} --dataset {wildcards.dataset}"
        " --initialisations {params.n} --table {output.table} --summary {output.summary}"
        " > {log} 2>&1"
