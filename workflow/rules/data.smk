# The prepared datasets, shared by every study (their content does not depend on it). The raw files are
# looked up in the mirrors (config key data_mirrors and ONEPASS_DATA_MIRRORS, given as --mirror) before any
# download. A
# variant of a dataset (same_as in its catalogue entry) uses its base's prepared data.
rule prepare_data:
    output:
        f"{DATA}/{{base}}/prepared.pt",
    log:
        f"{DATA}/logs/{{base}}.log",
    retries: 3
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        data_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),
        mirrors=MIRRORS,
    shell:
        "python -m onepass.data prepare {wildcards.base} --data-dir {params.data_dir} {params.mirrors}"
        " > {log} 2>&1"
