rule generate_data:
    message:
        "Generating the synthetic dataset ({config[dataset][synthetic][train_size]} train / "
        "{config[dataset][synthetic][test_size]} test images)"
    input:
        code=step_code_of("generate_data"),
    output:
        DATA,
    params:
        code=code_digest_of("generate_data"),
        cfg=rule_config("generate_data"),
    log:
        "results/logs/generate_data.log",
    shell:
        "{STEP} generate-data --config-json {params.cfg:q} --out {output:q} 2> {log:q}"


rule sample:
    message:
        "Sampling {config[sample][n_images]} analysis images ({config[sample][strategy]})"
    input:
        data=synthetic_data,
        code=step_code_of("sample"),
    output:
        MANIFEST,
    params:
        code=code_digest_of("sample"),
        cfg=rule_config("sample"),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
    log:
        "results/logs/sample.log",
    shell:
        "{STEP} sample --config-json {params.cfg:q} {params.data} --out {output:q} 2> {log:q}"
