rule prepare_data:
    output:
        "results/data/{dataset}/prepared.pt",
    params:
        data_dir=data_dir,
        mirrors=mirror_args,
    log:
        "results/logs/data/{dataset}.log",
    retries: 3
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    shell:
        "python -m onepass.data prepare {wildcards.dataset} --data-dir {params.data_dir}"
        " {params.mirrors} > {log} 2>&1"
