rule headline:
    message:
        "Writing {output} (the numbers README quotes)"
    input:
        teacher_summary=SUMMARY,
        teacher_log=lambda w: [TEACHER_LOG] if trained_teacher_weights() else [],
        table1=f"{TABLE1}.csv",
        run_logs=expand(f"{RUN_DIR}/log.txt", run=RUNS),
        evolution=expand(EVOLUTION_SUMMARY, run=RUNS),
        environments=lambda w: ([TEACHER_ENVIRONMENT] if trained_teacher_weights() else [])
        + expand(f"{RUN_DIR}/environment.json", run=RUNS),
        code=step_code_of("headline"),
    output:
        HEADLINE,
    params:
        code=code_digest_of("headline"),
        cfg=rule_config("headline"),
        teacher_log=lambda w, input: f"--teacher-log {input.teacher_log[0]}" if input.teacher_log else "",
    log:
        "results/logs/headline.log",
    shell:
        "{STEP} headline --config-json {params.cfg:q} --teacher-summary {input.teacher_summary:q} {params.teacher_log} "
        "--table1 {input.table1:q} --runs-dir results/runs --evolution {input.evolution:q} "
        "--environments {input.environments:q} --out {output:q} > {log:q} 2>&1"
