rule generate_data:
    message:
        "Generating the synthetic dataset ({config[dataset][synthetic][train_size]} train / "
        "{config[dataset][synthetic][test_size]} test images)"
    output:
        DATA,
    params:
        cfg=rule_config("generate_data"),
    log:
        "results/logs/generate_data.log",
    shell:
        "{STEP} generate-data --config-json {params.cfg:q} --out {output:q} 2> {log:q}"


rule sample:
    message:
        "Sampling {config[sample][n_images]} analysis images ({config[sample][strategy]})"
    input:
        synthetic_data,
    output:
        MANIFEST,
    params:
        cfg=rule_config("sample"),
        data=lambda w, input: f"--data {input[0]}" if input else "",
    log:
        "results/logs/sample.log",
    shell:
        "{STEP} sample --config-json {params.cfg:q} {params.data} --out {output:q} 2> {log:q}"
