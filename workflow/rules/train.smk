# One job per chunk of seeds of a (dataset, algorithm), the chunks read from the study's packing
# (onepass.packing, results/<study>/packing/<dataset>.json, decided once): the job writes its chunk's plan
# (python -m onepass.study chunk-plan), then trains the chunk as one population
# (python -m onepass.train) or, for a black-box search, runs its repetitions one after another
# (python -m onepass.search), and writes every seed's run directory. A job's rule is named after its chunk
# (train_<dataset>_<algorithm>_<first>_<last>), so asking for one seed's metrics.json runs only the chunk
# that holds it. Its param `identity` is the SHA-256 of the chunk's plan: a change of the runs' settings or
# members reruns exactly the chunks it touches, and nothing else does (the config is an untracked param,
# and the job depends on no sweep output: Snakemake would then not look at a chunk's own params whenever
# the sweep reruns; the device, decided where the job runs from its gpu resource, is untracked too). Resources come from
# the problem's size (onepass.jobs.resources); memory and time grow with each retry. The longest jobs
# start first (onepass.jobs.priority: their estimated training time).
# These rules are generated, one per chunk (a few hundred for the paper's study, README "Planning"),
# because a chunk's outputs are the run directories of a list of seeds (seeds0-24 holds seed0 ... seed24),
# which no wildcard pattern can name; a wildcard rule would need a job per seed, 18,000 of them for the
# paper's study, instead of a population per job. Every other training-side rule is a wildcard rule.
IDENTITIES = chunk_identities()
for dataset, algorithm, chunk in PLANNED.jobs():
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
        output:
            plan=chunk_record(dataset, algorithm, chunk),
            metrics=run_outputs(dataset, algorithm, chunk, "metrics.json"),
            history=run_outputs(dataset, algorithm, chunk, "history.csv"),
        log:
            f"{STUDY}/logs/train/{dataset}/{algorithm}/{name}.log",
        benchmark:
            f"{STUDY}/benchmarks/train/{dataset}/{algorithm}/{name}.tsv"
        priority: jobs.priority(CONFIG, dataset, algorithm, len(chunk))
        conda:
            "../../envs/baselines.yaml" if search else "../../envs/onepass.yaml"
        threads: resources_of["threads"]
        resources:
            mem_mb=resources_of["mem_mb"],
            runtime=resources_of["runtime"],
            gpu=resources_of["gpu"],
        params:
            identity=IDENTITIES[dataset, algorithm, chunk],
            config=Untracked(json.dumps(study.dataset_config(CONFIG, dataset))),
            dataset=dataset,
            algorithm=algorithm,
            seeds=study.seed_ranges(list(chunk)),
            module="onepass.search" if search else "onepass.train",
            runs_dir=lambda wildcards, output: str(
                Path(output.metrics[0]).parent.parent
            ),
            data_dir=lambda wildcards, input: str(Path(input.data[0]).parent.parent),
            device=job_device,
        shell:
            "python -m onepass.study chunk-plan --config {params.config:q} --dataset {params.dataset}"
            " --algorithm {params.algorithm} --seeds {params.seeds} --data-dir {params.data_dir} --out {output.plan} > {log} 2>&1"
            " && python -m {params.module} --plan {output.plan}"
            " --runs-dir {params.runs_dir} --data-dir {params.data_dir}"
            " --device {params.device} --threads {threads} --mem-mb {resources.mem_mb} --quiet"
            " >> {log} 2>&1"
