rule headline:
    message:
        "Writing {output} (the numbers README quotes)"
    input:
        teacher_summary=SUMMARY,
        teacher_log=lambda w: [TEACHER_LOG] if trained_teacher_weights() else [],
        table1=f"{TABLE1}.csv",
        run_logs=expand(f"{RUN_DIR}/log.txt", run=RUNS),
        evolution=expand(EVOLUTION_SUMMARY, run=RUNS),
        statistics=expand(EVOLUTION_STATISTICS, run=RUNS),
        teacher_statistics=STATISTICS,
        teacher_statistics_summary=STATISTICS_SUMMARY,
        teacher_evolution=lambda w: [TEACHER_EVOLUTION_SUMMARY] if trained_teacher_weights() else [],
        environments=lambda w: ([TEACHER_ENVIRONMENT] if trained_teacher_weights() else [])
        + expand(f"{RUN_DIR}/environment.json", run=RUNS),
        code=step_code_of("headline"),
    output:
        HEADLINE,
    params:
        code=code_digest_of("headline"),
        cfg=rule_config("headline"),
        teacher_log=lambda w, input: f"--teacher-log {input.teacher_log[0]}" if input.teacher_log else "",
        teacher_evolution=lambda w, input: (f"--teacher-evolution {input.teacher_evolution[0]}"
                                            if input.teacher_evolution else ""),
    log:
        "results/logs/headline.log",
    shell:
        "{STEP} headline --config-json {params.cfg:q} --teacher-summary {input.teacher_summary:q} {params.teacher_log} "
        "--table1 {input.table1:q} --runs-dir results/runs --evolution {input.evolution:q} "
        "--environments {input.environments:q} --teacher-statistics {input.teacher_statistics:q} "
        "--teacher-statistics-summary {input.teacher_statistics_summary:q} {params.teacher_evolution} "
        "--statistics {input.statistics:q} --out {output:q} > {log:q} 2>&1"
