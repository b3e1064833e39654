# One job per chunk of seeds of a (dataset, algorithm): the chunk trains as one population
# (python -m onepass.train) or, for a black-box search, runs its repetitions one after another
# (python -m onepass.search), and writes every seed's run directory. A job's rule is named after its
# chunk (train_<dataset>_<algorithm>_<first>_<last>), so asking for one seed's metrics.json runs only the
# chunk that holds it. Its input is the chunk's plan (rule chunk_plan): a change of the runs' settings or
# members rewrites it and reruns exactly the chunks it touches. Resources come from the problem's size
# (onepass.jobs.resources); memory and time grow with each retry.
# These rules are generated, one per chunk, because a chunk's outputs are the run directories of a list of
# seeds (seeds0-24 holds seed0 ... seed24), which no wildcard pattern can name; a wildcard rule would need a
# job per seed, 18,000 of them for the paper's study, instead of a population per job. Every other rule
# is a wildcard rule.
for dataset, algorithm, chunk in chunks():
    search = catalog.is_search(algorithm)
    resources_of = job_resources(dataset, algorithm, chunk)
    name = study.chunk_name(chunk)

    rule:
        name:
            f"train_{dataset}_{algorithm}_{chunk[0]}_{chunk[-1]}"
        input:
            data=ancient(
                expand(
                    rules.prepare_data.output[0], base=catalog.dataset(dataset).base
                )
            ),
            plan=expand(
                rules.chunk_plan.output[0],
                dataset=dataset,
                algorithm=algorithm,
                first=chunk[0],
                last=chunk[-1],
            ),
        output:
            metrics=run_outputs(dataset, algorithm, chunk, "metrics.json"),
            history=run_outputs(dataset, algorithm, chunk, "history.csv"),
        log:
            f"{STUDY}/logs/train/{dataset}/{algorithm}/{name}.log",
        benchmark:
            f"{STUDY}/benchmarks/train/{dataset}/{algorithm}/{name}.tsv"
        conda:
            "../../envs/baselines.yaml" if search else "../../envs/onepass.yaml"
        threads: resources_of["threads"]
        resources:
            mem_mb=resources_of["mem_mb"],
            runtime=resources_of["runtime"],
            gpu=resources_of["gpu"],
        params:
            module="onepass.search" if search else "onepass.train",
            runs_dir=lambda wildcards, output: str(
                Path(output.metrics[0]).parent.parent
            ),
            data_dir=lambda wildcards, input: str(Path(input.data[0]).parent.parent),
            device=jobs.device(config, dataset),
        shell:
            "python -m {params.module} --plan {input.plan}"
            " --runs-dir {params.runs_dir} --data-dir {params.data_dir}"
            " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb} --quiet"
            " > {log} 2>&1"
