rule extract:
    message:
        "Extracting block activations of the teacher on the sample"
    input:
        manifest=MANIFEST,
        data=synthetic_data,
        weights=trained_teacher_weights,
        code=step_code_of("extract"),
    output:
        ACTIVATIONS,
    params:
        code=code_digest_of("extract"),
        cfg=rule_config("extract"),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
        weights=lambda w, input: f"--model-weights {input.weights[0]}" if input.weights else "",
    log:
        "results/logs/extract.log",
    shell:
        "{STEP} extract --config-json {params.cfg:q} --manifest {input.manifest:q} "
        "{params.data} {params.weights} --out {output:q} 2> {log:q}"


rule reduce:
    message:
        "Reducing activations to entropy / spectrum / magnitude ({config[analysis][bins]} bins, "
        "{config[analysis][range_policy]} range)"
    input:
        activations=ACTIVATIONS,
        code=step_code_of("reduce"),
    output:
        values=REDUCTIONS,
        summary=SUMMARY,
    params:
        code=code_digest_of("reduce"),
        cfg=rule_config("reduce"),
        label=TEACHER["name"],
    log:
        "results/logs/reduce.log",
    shell:
        "{STEP} reduce --config-json {params.cfg:q} --activations {input.activations:q} --model-label {params.label:q} "
        "--out {output.values:q} --summary {output.summary:q} > {log:q} 2>&1"


rule statistics:
    message:
        "Per-layer statistics beyond entropy of the teacher (intervals, ranks, SEP, massive activations)"
    input:
        activations=ACTIVATIONS,
        code=step_code_of("statistics"),
    output:
        table=STATISTICS,
        summary=STATISTICS_SUMMARY,
    params:
        code=code_digest_of("statistics"),
        cfg=rule_config("statistics"),
        label=TEACHER["name"],
    log:
        "results/logs/statistics.log",
    shell:
        "{STEP} statistics --config-json {params.cfg:q} --activations {input.activations:q} "
        "--model-label {params.label:q} --out {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"
