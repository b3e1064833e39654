# One training run per (dataset, algorithm, seed). Seed s starts from row s of the dataset's
# initialisations.tsv (drawn by onepass.sweep from the config's sweep section), so every
# algorithm of a dataset starts from the same initialisations. A black-box search (BayesOpt, ASHA,
# PBT: config/algorithms/*.yaml with `search`) is run the same way by python -m onepass.search, which
# takes the same arguments; its seed is one repetition of the whole search (it draws its own
# hyperparameters and only records the initialisation's).
rule train:
    input:
        data="results/data/{dataset}/prepared.pt",
        sweep=ancient("results/sweep/{dataset}/initialisations.tsv"),
    output:
        metrics="results/runs/{dataset}/{algorithm}/seed{seed}/metrics.json",
        history="results/runs/{dataset}/{algorithm}/seed{seed}/history.csv",
    params:
        initial=initial_args,
        settings=run_settings,
        device="cpu",
        module=train_module,
    log:
        "results/logs/train/{dataset}/{algorithm}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{algorithm}/seed{seed}.tsv"
    wildcard_constraints:
        dataset=alternatives(CPU_DATASETS),
    threads: train_threads
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    group:
        train_group
    conda:
        train_env
    shell:
        "python -m {params.module}"
        " --dataset {wildcards.dataset} --algorithm {wildcards.algorithm} --seed {wildcards.seed}"
        " {params.initial} --data-dir results/data"
        " --out results/runs/{wildcards.dataset}/{wildcards.algorithm}/seed{wildcards.seed}"
        " --device {params.device} --threads {threads} {params.settings} > {log} 2>&1"


# The same run on a GPU, for the datasets the config's gpu key names (the SLURM profile
# sends these to a GPU partition via set-resources).
use rule train as train_gpu with:
    params:
        device="cuda",
    wildcard_constraints:
        dataset=alternatives(GPU_DATASETS),
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        gpu=train_gpu,
