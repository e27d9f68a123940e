# One rule per figure, so a param that only one figure reads re-runs only that figure.
for _figure, _stem in FIGURES.items():

    rule:
        name:
            f"fig_{_figure}"
        message:
            f"Drawing {_stem}"
        input:
            reductions=REDUCTIONS,
            code=step_code_of(f"fig_{_figure}"),
        output:
            pdf=f"{_stem}.pdf",
            png=report(f"{_stem}.png", caption=f"../report/fig_{_figure}.rst", category="Teacher analysis"),
        params:
            code=code_digest_of(f"fig_{_figure}"),
            cfg=rule_config(f"fig_{_figure}"),
            figure=_figure,
        log:
            f"results/logs/fig_{_figure}.log",
        shell:
            "{STEP} figures --config-json {params.cfg:q} --figure {params.figure} "
            "--reductions {input.reductions:q} --out {output.pdf:q} > {log:q} 2>&1"
