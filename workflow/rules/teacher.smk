rule train_teacher:
    message:
        "Training the teacher {config[teacher][model][arch]} from scratch "
        "({config[teacher][train][epochs]} epochs)"
    input:
        data=synthetic_data,
        code=step_code_of("train_teacher"),
    output:
        weights=TEACHER_WEIGHTS,
        log=TEACHER_LOG,
        environment=TEACHER_ENVIRONMENT,
        checkpoints=TEACHER_CHECKPOINTS,
    params:
        code=code_digest_of("train_teacher"),
        cfg=rule_config("train_teacher"),
        launch=training_command(TEACHER["resources"]),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
    log:
        "results/logs/train_teacher.log",
    threads: TEACHER["resources"]["cpus"]
    resources:
        **training_resources(TEACHER["resources"]),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launch} train-teacher --config-json {params.cfg:q} {params.data} "
        "--out-dir results/teacher >> {log:q} 2>&1"
