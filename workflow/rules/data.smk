# The prepared datasets, shared by every study (their content does not depend on it). The raw files are
# looked up in the mirrors (config key data_mirrors and ONEPASS_DATA_MIRRORS) before any download.
rule prepare_data:
    output:
        f"{DATA}/{{dataset}}/prepared.pt",
    log:
        f"{DATA}/logs/{{dataset}}.log",
    retries: 3
    localrule: True
    conda:
        "../../envs/onepass.yaml"
    params:
        data_dir=lambda wildcards, output: str(Path(output[0]).parent.parent),
    shell:
        "python -m onepass.data prepare {wildcards.dataset} --data-dir {params.data_dir} > {log} 2>&1"
