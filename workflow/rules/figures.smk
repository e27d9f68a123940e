# One rule per figure, so a param that only one figure reads re-runs only that figure.
for _figure, _stem in FIGURES.items():

    rule:
        name:
            f"fig_{_figure}"
        message:
            f"Drawing {_stem}"
        input:
            reductions=REDUCTIONS,
            # Fig. 1 and 2 draw the bootstrap interval over images around the profile.
            statistics=[STATISTICS] if _figure in ("entropy", "magnitude") else [],
            code=step_code_of(f"fig_{_figure}"),
        output:
            pdf=f"{_stem}.pdf",
            png=report(f"{_stem}.png", caption=f"../report/fig_{_figure}.rst", category="Teacher analysis"),
        params:
            code=code_digest_of(f"fig_{_figure}"),
            cfg=rule_config(f"fig_{_figure}"),
            figure=_figure,
            band=lambda w, input: f"--teacher-statistics {input.statistics[0]}" if input.statistics else "",
        log:
            f"results/logs/fig_{_figure}.log",
        shell:
            "{STEP} figures --config-json {params.cfg:q} --figure {params.figure} "
            "--reductions {input.reductions:q} {params.band} --out {output.pdf:q} > {log:q} 2>&1"


rule fig_robustness:
    message:
        "Drawing {FIG_ROBUSTNESS} (the entropy profile with per-layer range and without massive tokens)"
    input:
        statistics=STATISTICS,
        summary=STATISTICS_SUMMARY,
        code=step_code_of("fig_robustness"),
    output:
        pdf=f"{FIG_ROBUSTNESS}.pdf",
        png=report(f"{FIG_ROBUSTNESS}.png", caption="../report/fig_robustness.rst", category="Teacher analysis"),
    params:
        code=code_digest_of("fig_robustness"),
        cfg=rule_config("fig_robustness"),
    log:
        "results/logs/fig_robustness.log",
    shell:
        "{STEP} figures --config-json {params.cfg:q} --figure robustness --teacher-statistics {input.statistics:q} "
        "--teacher-summary {input.summary:q} --out {output.pdf:q} > {log:q} 2>&1"


rule fig_teacher_evolution:
    message:
        "Drawing {FIG_TEACHER_EVOLUTION} (the teacher's own training)"
    input:
        statistics=TEACHER_EVOLUTION_STATISTICS,
        code=step_code_of("fig_teacher_evolution"),
    output:
        pdf=f"{FIG_TEACHER_EVOLUTION}.pdf",
        png=report(f"{FIG_TEACHER_EVOLUTION}.png", caption="../report/fig_teacher_evolution.rst",
                   category="Teacher analysis"),
    params:
        code=code_digest_of("fig_teacher_evolution"),
        cfg=rule_config("fig_teacher_evolution"),
    log:
        "results/logs/fig_teacher_evolution.log",
    shell:
        "{STEP} figures --config-json {params.cfg:q} --figure teacher_evolution --statistics {input.statistics:q} "
        "--out {output.pdf:q} > {log:q} 2>&1"
