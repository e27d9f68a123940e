rule evolution:
    message:
        "Analysing every checkpoint of {wildcards.run}"
    input:
        checkpoints=f"{RUN_DIR}/checkpoints.json",
        manifest=MANIFEST,
        data=synthetic_data,
        reference=ACTIVATIONS,
        code=step_code_of("evolution"),
    output:
        values=EVOLUTION,
        summary=EVOLUTION_SUMMARY,
        statistics=EVOLUTION_STATISTICS,
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
        "{params.data} --reference {input.reference:q} --out {output.values:q} --summary {output.summary:q} "
        "--statistics {output.statistics:q} 2> {log:q}"


rule teacher_evolution:
    message:
        "Analysing every checkpoint of the teacher's own training"
    input:
        checkpoints=TEACHER_CHECKPOINTS,
        manifest=MANIFEST,
        data=synthetic_data,
        reference=ACTIVATIONS,
        code=step_code_of("teacher_evolution"),
    output:
        values=TEACHER_EVOLUTION,
        summary=TEACHER_EVOLUTION_SUMMARY,
        statistics=TEACHER_EVOLUTION_STATISTICS,
    params:
        code=code_digest_of("teacher_evolution"),
        cfg=rule_config("teacher_evolution"),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
    log:
        "results/logs/teacher_evolution.log",
    shell:
        "{STEP} evolution --config-json {params.cfg:q} --run-dir results/teacher --model-key teacher "
        "--manifest {input.manifest:q} {params.data} --reference {input.reference:q} --out {output.values:q} "
        "--summary {output.summary:q} --statistics {output.statistics:q} 2> {log:q}"


# CKA heatmaps, best-matching teacher layer over epochs, rank / SEP / massive profiles: one rule per figure.
for _figure, _stem in STATISTICS_FIGURES.items():

    rule:
        name:
            f"fig_{_figure}"
        message:
            f"Drawing {_stem}"
        input:
            statistics=expand(EVOLUTION_STATISTICS, run=FIG4_RUNS),
            teacher=[STATISTICS] if _figure == "statistics" else [],
            code=step_code_of(f"fig_{_figure}"),
        output:
            pdf=f"{_stem}.pdf",
            png=report(f"{_stem}.png", caption=f"../report/fig_{_figure}.rst", category="Distillation"),
        params:
            code=code_digest_of(f"fig_{_figure}"),
            cfg=rule_config(f"fig_{_figure}"),
            figure=_figure,
            labels=json.dumps(FIG4_PANELS),
            teacher=lambda w, input: f"--teacher-statistics {input.teacher[0]}" if input.teacher else "",
        log:
            f"results/logs/fig_{_figure}.log",
        shell:
            "{STEP} figures --config-json {params.cfg:q} --figure {params.figure} --statistics {input.statistics:q} "
            "{params.teacher} --labels-json {params.labels:q} --out {output.pdf:q} > {log:q} 2>&1"


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
