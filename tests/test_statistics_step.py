"""The statistics step (the teacher's table beyond entropy) and the headline sections that read the statistics,
through the real CLI."""

from __future__ import annotations

import json

import pandas as pd

from pipeline_steps.analysis.layer_statistics import layer_statistics, statistics_settings, statistics_summary
from pipeline_steps.config import load_params

from conftest import assert_one_line_error, run_step, vit_activations

ANALYSIS = {"bins": 50, "range_policy": "global", "chunk_images": 3, "shape_tolerance": 0.05,
            "statistics": {"bootstrap": 200, "bootstrap_seed": 3, "confidence": 0.9}}
CFG = json.dumps({"analysis": ANALYSIS})


def test_the_step_writes_layer_statistics_and_its_summary_with_the_params_settings(tmp_path):
    acts = vit_activations(tmp_path / "teacher.npz", n=9)
    out, summary = tmp_path / "stats" / "teacher.parquet", tmp_path / "stats" / "teacher_summary.parquet"
    proc = run_step("statistics", "--config-json", CFG, "--activations", str(acts), "--model-label", "cait",
                    "--out", str(out), "--summary", str(summary))
    assert proc.returncode == 0, proc.stderr
    assert "entropy: " in proc.stdout and str(out) in proc.stdout
    analysis = load_params([], [CFG])["analysis"]  # the schema's defaults filled in (massive thresholds)
    expected = layer_statistics(acts, model_label="cait", **statistics_settings(analysis))
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(summary), statistics_summary(expected, 0.05), check_exact=True)
    # The params' bootstrap settings were used: 90% intervals, narrower than the 95% default's.
    entropy = expected[expected["metric"] == "entropy"]
    assert ((entropy["ci_low"] < entropy["value"]) & (entropy["value"] < entropy["ci_high"])).all()
    wide = layer_statistics(acts, model_label="cait", **{**statistics_settings(analysis), "confidence": 0.99})
    wide_entropy = wide[wide["metric"] == "entropy"]
    assert ((wide_entropy["ci_high"] - wide_entropy["ci_low"]).to_numpy()
            > (entropy["ci_high"] - entropy["ci_low"]).to_numpy()).all()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out, summary = tmp_path / "teacher.parquet", tmp_path / "teacher_summary.parquet"
    proc = run_step("statistics", "--config-json", CFG, "--activations", str(tmp_path / "none.npz"),
                    "--out", str(out), "--summary", str(summary))
    assert_one_line_error(proc, "none.npz")
    bad = run_step("statistics", "--config-json", json.dumps({"analysis": {"statistics": {"confidence": 1.5}}}),
                   "--activations", str(tmp_path / "none.npz"), "--out", str(out), "--summary", str(summary))
    assert_one_line_error(bad, "confidence")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_headline_reads_the_statistics(tmp_path):
    """The headline's sections beyond entropy, each number read from the table that defines it."""
    from pipeline_steps.analysis.reductions import reduce_activations

    teacher = vit_activations(tmp_path / "teacher.npz", depth=4, n=9)
    students = {run: vit_activations(tmp_path / f"{run}.npz", depth=2, n=9) for run in ("softkd-s0", "softkd-s1")}
    settings = statistics_settings(load_params([], [CFG])["analysis"])
    t_stats = layer_statistics(teacher, **settings)
    t_stats.to_parquet(tmp_path / "t.parquet")
    statistics_summary(t_stats, 0.05).to_parquet(tmp_path / "t_summary.parquet")
    reduce_activations(teacher, shape_tolerance=0.05)[1].to_parquet(tmp_path / "reduce_summary.parquet")
    paths = []
    for run, acts in students.items():
        table = layer_statistics(acts, reference=teacher, model_label=run, seed=int(run[-1]), checkpoint="best",
                                 epoch=3, **settings)
        table.to_parquet(tmp_path / f"{run}_statistics.parquet")
        paths.append(str(tmp_path / f"{run}_statistics.parquet"))
    # The teacher's own training: two checkpoints' summaries, as the evolution step writes them.
    evo = pd.concat([statistics_summary(t_stats, 0.05).assign(checkpoint=c, epoch=e)
                     for c, e in (("epoch_0000", 0), ("epoch_0001", 1), ("best", 1))])
    evo.to_parquet(tmp_path / "evo_summary.parquet")
    out = tmp_path / "headline.md"
    proc = run_step("headline", "--config-json", CFG, "--teacher-summary", str(tmp_path / "reduce_summary.parquet"),
                    "--teacher-statistics", str(tmp_path / "t.parquet"),
                    "--teacher-statistics-summary", str(tmp_path / "t_summary.parquet"),
                    "--teacher-evolution", str(tmp_path / "evo_summary.parquet"), "--statistics", *paths,
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "## Teacher: beyond entropy" in text and "- entropy_per_layer_range: " in text
    assert "massive activations (|A| > 100 and > 1000 x the image's median |A|): 0 values" in text
    lines = text.splitlines()
    start = lines.index("## Teacher: entropy profile over its own training (bits)")
    rows = [line for line in lines[start:] if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 2  # the epoch checkpoints, not the best one
    # CKA: the seed mean of the two runs at the best checkpoint.
    cka = pd.concat(pd.read_parquet(p) for p in paths).query("metric == 'cka'")
    mean = cka.groupby(["teacher_layer", "layer"])["value"].mean().unstack()
    row = next(line for line in lines if line.startswith("| softkd | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{int(mean[1].idxmax())} ({mean[1].max():.3f})"
    assert cells[3] == f"{int(mean[2].idxmax())} ({mean[2].max():.3f})"
    assert cells[4] == f"{mean.loc[4, 2]:.3f}"
