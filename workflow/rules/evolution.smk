rule evolution:
    message:
        "Analysing every checkpoint of {wildcards.run}"
    input:
        checkpoints=f"{RUN_DIR}/checkpoints.json",
        manifest=MANIFEST,
        data=synthetic_data,
        code=step_code_of("evolution"),
    output:
        values=EVOLUTION,
        summary=EVOLUTION_SUMMARY,
    params:
        code=code_digest_of("evolution"),
        cfg=rule_config("evolution"),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
        run_dir=RUN_DIR,
    log:
        "results/logs/evolution/{run}.log",
    wildcard_constraints:
        run="|".join(map(re.escape, RUNS)),
    shell:
        "{STEP} evolution --config-json {params.cfg:q} --run-dir {params.run_dir:q} --manifest {input.manifest:q} "
        "{params.data} --out {output.values:q} --summary {output.summary:q} 2> {log:q}"


rule fig_evolution:
    message:
        "Drawing {FIG4} (Fig. 4)"
    input:
        evolution=expand(EVOLUTION, run=FIG4_RUNS),
        teacher=REDUCTIONS,
        code=step_code_of("fig_evolution"),
    output:
        pdf=f"{FIG4}.pdf",
        png=report(f"{FIG4}.png", caption="../report/fig_evolution.rst", category="Distillation"),
    params:
        code=code_digest_of("fig_evolution"),
        cfg=rule_config("fig_evolution"),
        labels=json.dumps(FIG4_PANELS),
    log:
        "results/logs/fig_evolution.log",
    shell:
        "{STEP} figures --config-json {params.cfg:q} --figure evolution --evolution {input.evolution:q} "
        "--reductions {input.teacher:q} --labels-json {params.labels:q} --out {output.pdf:q} > {log:q} 2>&1"


rule fig_evolution_published:
    message:
        "Drawing {FIG4_PUBLISHED} (the paper's Fig. 4 from the authors' tables)"
    input:
        entropy=[f"{PUBLISHED_ENTROPY_DIR}/{name}" for name in PUBLISHED_ENTROPY],
        logs=[f"{PUBLISHED_LOGS_DIR}/{log}" for _, _, log in PUBLISHED_ENTROPY.values()],
        code=step_code_of("fig_evolution_published"),
    output:
        pdf=f"{FIG4_PUBLISHED}.pdf",
        png=report(f"{FIG4_PUBLISHED}.png", caption="../report/fig_evolution_published.rst",
                   category="Published (the authors' data)"),
    params:
        code=code_digest_of("fig_evolution_published"),
        cfg=rule_config("fig_evolution_published"),
        entropy=PUBLISHED_ENTROPY_DIR,
        logs=PUBLISHED_LOGS_DIR,
    log:
        "results/logs/fig_evolution_published.log",
    shell:
        "{STEP} figures --config-json {params.cfg:q} --figure evolution_published "
        "--published-entropy {params.entropy:q} --published-logs {params.logs:q} --out {output.pdf:q} > {log:q} 2>&1"


rule evolution_grid:
    input:
        expand(EVOLUTION, run=RUNS),
