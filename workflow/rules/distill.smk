# Scheduler resources from params (distill.resources): `gpu` is what the SLURM executor plugin turns into
# sbatch --gpus; cpus_per_task follows the rule's threads.
DISTILL_RESOURCES = config["distill"]["resources"]


rule teacher_cache:
    message:
        "Caching the teacher's logits and paired features over the training set"
    input:
        data=synthetic_data,
        weights=trained_teacher_weights,
        code=step_code_of("teacher_cache"),
    output:
        TEACHER_CACHE,
    params:
        code=code_digest_of("teacher_cache"),
        cfg=teacher_cache_config(),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
        weights=lambda w, input: f"--teacher-weights {input.weights[0]}" if input.weights else "",
    log:
        "results/logs/teacher_cache.log",
    threads: TEACHER["resources"]["cpus"]
    resources:
        mem_mb=DISTILL_RESOURCES["mem_mb"],
        runtime=DISTILL_RESOURCES["runtime"],
        gpu=min(DISTILL_RESOURCES["gpus"], 1),
    shell:
        "OMP_NUM_THREADS={threads} exec {STEP} teacher-cache --config-json {params.cfg:q} {params.data} {params.weights} "
        "--out {output:q} 2> {log:q}"


# One job per grid run. Its checkpoints and resume state live in the run directory but are not declared
# outputs, so a retried, requeued or restarted job finds them and resumes (Snakemake deletes declared outputs
# of a failed job; these are written last).
rule distill:
    message:
        "Distilling {wildcards.run} ({params.epochs} epochs)"
    input:
        data=synthetic_data,
        weights=trained_teacher_weights,
        cache=teacher_cache_input,
        evidence=pair_evidence_input,
        code=step_code_of("distill"),
    output:
        weights=f"{RUN_DIR}/model.safetensors",
        log=f"{RUN_DIR}/log.txt",
        checkpoints=f"{RUN_DIR}/checkpoints.json",
        environment=f"{RUN_DIR}/environment.json",
    params:
        code=code_digest_of("distill"),
        cfg=run_config,
        launch=training_command(DISTILL_RESOURCES),
        data=lambda w, input: f"--data {input.data[0]}" if input.data else "",
        weights=lambda w, input: f"--teacher-weights {input.weights[0]}" if input.weights else "",
        cache=lambda w, input: f"--teacher-cache {input.cache[0]}" if input.cache else "",
        evidence=pair_evidence_option,
        out_dir=RUN_DIR,
        epochs=lambda w: RUNS[w.run].epochs,
    log:
        "results/logs/distill/{run}.log",
    wildcard_constraints:
        run="|".join(map(re.escape, RUNS)),
    threads: DISTILL_RESOURCES["cpus"]
    resources:
        **training_resources(DISTILL_RESOURCES),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launch} distill --config-json {params.cfg:q} --run-id {wildcards.run} "
        "{params.data} {params.weights} {params.cache} {params.evidence} --out-dir {params.out_dir:q} >> {log:q} 2>&1"


rule table1:
    message:
        "Table 1 over {n} runs".format(n=len(RUNS))
    input:
        logs=expand(f"{RUN_DIR}/log.txt", run=RUNS),
        code=step_code_of("table1"),
    output:
        report(f"{TABLE1}.csv", caption="../report/table1.rst", category="Distillation"),
        f"{TABLE1}.md",
        f"{TABLE1}.tex",
        f"{TABLE1}.json",
    params:
        code=code_digest_of("table1"),
        cfg=rule_config("table1"),
        stem=TABLE1,
    log:
        "results/logs/table1.log",
    shell:
        "{STEP} table1 --config-json {params.cfg:q} --runs-dir results/runs --out {params.stem:q} 2> {log:q}"


rule table1_published:
    message:
        "Table 1 of the authors' published logs"
    input:
        logs=[f"{PUBLISHED_LOGS_DIR}/{name}" for name in PUBLISHED_TABLE1_LOGS],
        code=step_code_of("table1_published"),
    output:
        report(f"{TABLE1_PUBLISHED}.csv", caption="../report/table1_published.rst",
               category="Published (the authors' data)"),
        f"{TABLE1_PUBLISHED}.md",
        f"{TABLE1_PUBLISHED}.tex",
        f"{TABLE1_PUBLISHED}.json",
    params:
        code=code_digest_of("table1_published"),
        cfg=rule_config("table1_published"),
        logs=PUBLISHED_LOGS_DIR,
        stem=TABLE1_PUBLISHED,
    log:
        "results/logs/table1_published.log",
    shell:
        "{STEP} table1 --config-json {params.cfg:q} --published-logs {params.logs:q} --out {params.stem:q} 2> {log:q}"


# Targets for the whole grid (the DVC stages run these).
rule distill_grid:
    input:
        expand(f"{RUN_DIR}/model.safetensors", run=RUNS),
