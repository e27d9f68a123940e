"""Figure layer choice and rendering (PDF + PNG) from a hand-made reductions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline_steps.steps import figures
from pipeline_steps.reporting import plots
from pipeline_steps.errors import UserError

from conftest import vit_activations

FIGURE_PARAMS = {"spectra_layers": "auto", "dpi": 60, "title": None}


@pytest.mark.parametrize("entropy, expected", [
    ([5, 4, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 4, 5, 11, 12]),        # minimum at 5; neighbours tie, the earlier wins
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 11, 12]),     # monotonic: minimum at the border
    ([3, 2, 1.5, 1, 0.5, 0.2, 0.4, 1, 2, 3], [1, 2, 6, 7, 9, 10]),
    ([3, 1, 2], [1, 2, 3]),
])
def test_choose_spectra_layers(entropy, expected):
    chosen = plots.choose_spectra_layers(entropy)
    assert len(chosen) == min(6, len(entropy)) and len(set(chosen)) == len(chosen)
    assert chosen[:2] == [1, 2] or len(entropy) <= 6
    assert chosen == sorted(chosen)
    if expected is not None:
        assert chosen == expected


def test_choose_spectra_layers_override_is_validated():
    assert plots.choose_spectra_layers([1.0] * 12, [12, 1, 5]) == [1, 5, 12]
    with pytest.raises(UserError, match="spectra_layers contains 13 but the model has 12 layers"):
        plots.choose_spectra_layers([1.0] * 12, [1, 13])


def _values(n_layers: int = 8, channels: int = 16) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(1, n_layers + 1):
        rows.append({"layer": layer, "metric": "entropy", "k": None, "value": abs(layer - 4.5) + 2})
        rows.append({"layer": layer, "metric": "magnitude", "k": None, "value": abs(layer - 5.5) + 1})
        rows += [{"layer": layer, "metric": "spectrum", "k": k, "value": float(v)}
                 for k, v in enumerate(rng.random(channels) + 0.1)]
    df = pd.DataFrame(rows)
    return df.assign(model="teacher", arch="vit_test", checkpoint="final")


@pytest.mark.parametrize("figure", figures.FIGURES)
def test_figures_written_as_pdf_and_png(tmp_path, figure):
    table = tmp_path / "values.parquet"
    _values().to_parquet(table)
    written = figures.run(figure, table, tmp_path / f"fig_{figure}.pdf", FIGURE_PARAMS)
    assert [p.suffix for p in written] == [".pdf", ".png"]
    assert written[0].read_bytes().startswith(b"%PDF")
    assert written[1].read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_missing_reductions_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run the reduce step first"):
        figures.run("entropy", tmp_path / "missing.parquet", tmp_path / "f.pdf", FIGURE_PARAMS)
    assert not (tmp_path / "f.pdf").exists()


def test_spectrum_axis_drops_nyquist_keeps_dc():
    freq, s = plots._spectrum(_values(channels=16), layer=1)
    assert len(freq) == 8 and freq[0] == 0.0 and freq[-1] == pytest.approx(7 / 16)


# ---------------------------------------------------------------------------------------------------------
# Fig. 3 scale, figure titles
# ---------------------------------------------------------------------------------------------------------

def test_spectra_scale_log_shared_or_linear_per_layer():
    values = _values(n_layers=6)
    log = plots.figure_spectra(values, [1, 2, 3, 4, 5, 6], scale="log")
    linear = plots.figure_spectra(values, [1, 2, 3, 4, 5, 6], scale="linear")
    assert {ax.get_yscale() for ax in log.axes} == {"log"}
    assert len({ax.get_ylim() for ax in log.axes}) == 1  # one shared axis
    assert {ax.get_yscale() for ax in linear.axes} == {"linear"}
    # Each layer on its own axis: the y-limits follow that layer's own spectrum.
    for ax, layer in zip(linear.axes, range(1, 7)):
        _, s = plots._spectrum(values[values["metric"] == "spectrum"], layer)
        lo, hi = ax.get_ylim()
        assert lo <= s.min() and hi >= s.max() and hi - lo < 2 * (s.max() - s.min())
    grid = plots.figure_spectra_grid(values, scale="linear")
    assert {ax.get_yscale() for ax in grid.axes if ax.get_visible()} == {"linear"}
    for fig in (log, linear, grid):
        plots.plt.close(fig)
    with pytest.raises(UserError, match="figures.spectra_scale is 'symlog'; choose one of log, linear"):
        plots.figure_spectra(values, [1], scale="symlog")


@pytest.mark.parametrize("spec, expected", [
    ({"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 128, "depth": 12,
                                                 "num_heads": 4, "num_classes": 10}},
     "ViT, 12 blocks, width 128, patch 8"),                       # the default teacher: kwargs override the name
    ({"arch": "cait_s24_224", "kwargs": {}}, "CaiT, 24 blocks, width 384, patch 16"),  # the paper's teacher
    ({"arch": "deit_tiny_patch16_224", "kwargs": {"drop_path_rate": 0.0}}, "DeiT, 12 blocks, width 192, patch 16"),
])
def test_describe_model_names_the_model_as_configured(spec, expected):
    from pipeline_steps.models.build import describe_model

    assert describe_model(spec) == expected


def test_teacher_figure_title_from_the_model_spec():
    assert figures.model_title("teacher", None, "vit_test") == "teacher (vit_test)"
    assert figures.model_title("teacher", {"arch": "cait_s24_224"}, "vit_test") == "teacher (vit_test)"  # foreign spec
    vit = {"arch": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "depth": 6, "img_size": 32}}
    assert figures.model_title("teacher", vit, "vit_tiny_patch16_224") == "teacher: ViT, 6 blocks, width 192, patch 8"


# ---------------------------------------------------------------------------------------------------------
# Fig. 4: panels, colour scales, best and init curves, the teacher's shape
# ---------------------------------------------------------------------------------------------------------

def _evolution(run_id: str, epochs, best_epoch: int | None, depth: int = 4) -> pd.DataFrame:
    """A hand-made evolution table: entropy = epoch / 100 + layer (so every curve is distinguishable); the best
    checkpoint's rows 0.5 above its epoch's."""
    rows = [{"run_id": run_id, "model": run_id, "checkpoint": f"epoch_{e:04d}", "epoch": e, "layer": layer,
             "metric": "entropy", "value": e / 100 + layer} for e in epochs for layer in range(1, depth + 1)]
    if best_epoch is not None:
        rows += [{"run_id": run_id, "model": run_id, "checkpoint": "best", "epoch": best_epoch, "layer": layer,
                  "metric": "entropy", "value": best_epoch / 100 + layer + 0.5} for layer in range(1, depth + 1)]
    return pd.DataFrame(rows)


def _epoch_curves(ax) -> dict[int, "plots.plt.Line2D"]:
    out = {}
    for ln in ax.get_lines():
        label = ln.get_label()
        if label.startswith("_epoch "):
            out[int(label.split()[1])] = ln
        elif label == "init (epoch 0)":
            out[0] = ln
    return out


def test_fig4_colour_scale_spans_each_runs_own_epochs_and_panels_are_selectable():
    import matplotlib
    from matplotlib.colors import to_rgba

    viridis = matplotlib.colormaps["viridis"]
    values = pd.concat([_evolution("softkd-s0", range(0, 301, 30), 297),
                        _evolution("softkd_500ep-s0", range(0, 501, 50), 491),
                        _evolution("spectralkd_f1-s0", range(0, 301, 30), 299)])
    labels = {"softkd_500ep": "SoftKD (500 ep)", "softkd": "SoftKD"}  # a selection, in this order
    fig = plots.figure_evolution(values, None, labels)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["(a) SoftKD (500 ep)", "(b) SoftKD"]
    for ax, last in zip(panels, (500, 300)):
        curves = _epoch_curves(ax)
        assert sorted(curves) == list(range(0, last + 1, last // 10))
        assert to_rgba(curves[last].get_color()) == viridis(1.0)  # the run's own last epoch: the top colour
        assert to_rgba(curves[0].get_color()) == viridis(0.0)
        mid = last // 2
        assert to_rgba(curves[mid].get_color()) == viridis(0.5)
    # Two epoch ranges: one colorbar per panel, each from 0 to its run's last epoch.
    bars = [ax for ax in fig.axes if ax not in panels]
    assert sorted(ax.get_ylim() for ax in bars) == [(0.0, 300.0), (0.0, 500.0)]
    # Best: black solid, its epoch in the label; init dotted.
    (best,) = [ln for ln in panels[0].get_lines() if ln.get_label().startswith("best")]
    assert best.get_label() == "best (epoch 491)" and best.get_color() == "black" and best.get_linestyle() == "-"
    np.testing.assert_array_equal(best.get_ydata(), 4.91 + np.arange(1, 5) + 0.5)
    assert _epoch_curves(panels[0])[0].get_linestyle() == ":"
    plots.plt.close(fig)

    same = plots.figure_evolution(values, None, {"softkd": "SoftKD", "spectralkd_f1": "SpectralKD F1"})
    assert len([ax for ax in same.axes if not ax.get_title()]) == 1  # the same range: one shared colorbar
    plots.plt.close(same)


def test_fig4_teacher_is_drawn_for_its_shape_on_the_panels_range():
    values = _evolution("softkd-s0", [0, 1, 2], 2, depth=4)
    teacher = pd.DataFrame({"model": "teacher", "checkpoint": "final", "layer": range(1, 9), "metric": "entropy",
                            "value": [5.0, 4.0, 3.5, 3.4, 3.6, 4.2, 5.5, 7.0]})
    fig = plots.figure_evolution(values, teacher)
    (ax,) = [ax for ax in fig.axes if ax.get_title()]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == plots.TEACHER_SHAPE_LABEL]
    # Student curves span 1.00 (epoch 0, layer 1) .. 4.52 (best: epoch 2, layer 4, + 0.5).
    t = np.array([5.0, 4.0, 3.5, 3.4, 3.6, 4.2, 5.5, 7.0])
    np.testing.assert_allclose(line.get_ydata(), 1.0 + (t - 3.4) / (7.0 - 3.4) * (4.52 - 1.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(line.get_xdata(), 1 + np.arange(8) * 3 / 7)  # depth-aligned
    assert plots.TEACHER_SHAPE_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    plots.plt.close(fig)


def test_fig4_title_names_students_and_teacher_as_configured():
    student = {"arch": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64,
                                                          "depth": 6, "num_heads": 2}}
    teacher = {"arch": "cait_s24_224", "kwargs": {}}
    assert figures.students_title(student, teacher, ["vit_tiny_patch16_224"]) == (
        "Students: ViT, 6 blocks, width 64, patch 8; teacher: CaiT, 24 blocks, width 384, patch 16")
    assert figures.students_title(student, teacher, ["deit_tiny_patch16_224"]) is None  # tables of another model


# ---------------------------------------------------------------------------------------------------------
# Statistics figures: the teacher's bootstrap band, CKA heatmaps and best matches, ranks and spectra across
# depth, the entropy profile three ways, the teacher's own training; the figures step's flags
# ---------------------------------------------------------------------------------------------------------

STAT_PARAMS = {"spectra_layers": "auto", "dpi": 50, "title": None}


@pytest.fixture(scope="module")
def stat_tables(tmp_path_factory):
    """Real statistics tables: a 4-layer teacher (width 32) and two 3-layer students (width 16) with CKA rows
    to it, each student relabelled as the checkpoints of runs (``run_id``, ``checkpoint``, ``epoch``)."""
    from pipeline_steps.analysis.layer_statistics import layer_statistics

    d = tmp_path_factory.mktemp("statistics")
    teacher_npz = vit_activations(d / "teacher.npz", depth=4, n=6, seed=0, width=32)
    teacher = layer_statistics(teacher_npz, bootstrap=50)
    students = [layer_statistics(vit_activations(d / f"s{k}.npz", depth=3, n=6, seed=k, width=16),
                                 reference=teacher_npz, bootstrap=0) for k in (1, 2)]
    runs = []
    for run_id, table in [("softkd-s0", students[0]), ("softkd-s1", students[1]), ("spectralkd_f1-s0", students[1])]:
        for checkpoint, epoch in [("epoch_0000", 0), ("epoch_0001", 1), ("best", 1)]:
            runs.append(table.assign(model=run_id, run_id=run_id, checkpoint=checkpoint, epoch=epoch))
    return {"dir": d, "teacher_npz": teacher_npz, "teacher": teacher, "runs": pd.concat(runs, ignore_index=True)}


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_title()]


def _render_bytes(fig, path) -> tuple[bytes, bytes]:
    pdf, png = plots.save_figure(fig, path, dpi=50)
    return pdf.read_bytes(), png.read_bytes()


def test_profile_band_is_the_bootstrap_interval_and_no_band_is_the_old_figure(stat_tables, tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    teacher = stat_tables["teacher"]
    entropy = teacher[teacher["metric"] == "entropy"].sort_values("layer")
    fig = plots.figure_profile(teacher, "entropy", "T", band=teacher)
    (ax,) = fig.axes
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert band.get_label() == plots.BAND_LABEL
    assert plots.BAND_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(entropy["ci_low"].min()) and ys.max() == pytest.approx(entropy["ci_high"].max())
    assert (entropy["ci_low"] <= entropy["value"]).all() and (entropy["value"] <= entropy["ci_high"]).all()
    written = plots.save_figure(fig, tmp_path / "band.pdf", dpi=50)
    assert [p.read_bytes()[:4] for p in written] == [b"%PDF", b"\x89PNG"]

    # band=None is the figure without the argument, byte for byte (a fixed PDF date: SOURCE_DATE_EPOCH).
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    values = _values()
    plain = _render_bytes(plots.figure_profile(values, "entropy", "T"), tmp_path / "plain.pdf")
    none = _render_bytes(plots.figure_profile(values, "entropy", "T", band=None), tmp_path / "none.pdf")
    assert plain == none
    fig = plots.figure_profile(values, "magnitude")
    assert not fig.axes[0].collections and fig.axes[0].get_legend() is None  # one profile: no legend, as before
    plots.plt.close(fig)


def test_profile_band_of_another_model_or_without_intervals_is_a_user_error(stat_tables):
    teacher = stat_tables["teacher"]
    with pytest.raises(UserError, match="has 4 layers .1..4. but the profile 8 .1..8.; give the statistics"):
        plots.figure_profile(_values(), "entropy", band=teacher)
    no_ci = teacher.assign(ci_low=np.nan, ci_high=np.nan)
    with pytest.raises(UserError, match="no bootstrap interval for 'magnitude'"):
        plots.figure_profile(teacher, "magnitude", band=no_ci)


def _cka_table(matrices: dict[str, np.ndarray], checkpoint: str = "best", epoch: int = 3) -> pd.DataFrame:
    """Hand-made CKA rows: run id -> ``[teacher layer, student layer]`` matrix (1-based layers)."""
    rows = [{"model": run_id, "run_id": run_id, "seed": 0, "checkpoint": checkpoint, "epoch": epoch,
             "layer": s + 1, "layer_name": f"blocks.{s}", "teacher_layer": t + 1, "metric": "cka", "level": np.nan,
             "value": float(m[t, s]), "ci_low": np.nan, "ci_high": np.nan, "n_images": 8}
            for run_id, m in matrices.items() for t in range(m.shape[0]) for s in range(m.shape[1])]
    from pipeline_steps.analysis.layer_statistics import STATISTICS_COLUMNS

    return pd.DataFrame(rows)[list(STATISTICS_COLUMNS)]


def test_cka_heatmaps_are_the_seed_mean_matrices(stat_tables, tmp_path):
    rng = np.random.default_rng(1)
    m = {run: rng.random((5, 3)) for run in ("softkd-s0", "softkd-s1", "spectralkd_f1-s0")}
    table = pd.concat([_cka_table(m), _cka_table({"softkd-s0": np.zeros((5, 3))}, checkpoint="epoch_0001")])
    fig = plots.figure_cka(table, {"spectralkd_f1": "SpectralKD F1", "softkd": "SoftKD"}, title="CKA")
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["(a) SpectralKD F1", "(b) SoftKD, 2 seeds"]
    for ax, expected in zip(panels, (m["spectralkd_f1-s0"], (m["softkd-s0"] + m["softkd-s1"]) / 2)):
        (image,) = ax.get_images()
        np.testing.assert_allclose(image.get_array(), expected, rtol=0, atol=1e-15)  # the best rows only
        assert image.get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3", "4", "5"]
    assert len(fig.axes) == len(panels) + 1  # one shared colorbar
    plots.plt.close(fig)
    fig = plots.figure_cka(stat_tables["runs"])  # real tables: every configuration, sorted
    assert [ax.get_title() for ax in _panels(fig)] == ["(a) softkd, 2 seeds", "(b) spectralkd_f1"]
    assert [p.suffix for p in plots.save_figure(fig, tmp_path / "cka.pdf", dpi=50)] == [".pdf", ".png"]
    with pytest.raises(UserError, match="no best-checkpoint CKA rows for configuration 'projectorkd'"):
        plots.figure_cka(table, {"projectorkd": "ProjectorKD"})
    with pytest.raises(UserError, match="no 'cka' rows of the best checkpoint; run the evolution step with --ref"):
        plots.figure_cka(stat_tables["teacher"])


def test_cka_best_match_is_the_first_argmax_of_the_seed_mean():
    # Epoch 1, seed mean: student layer 1 -> teacher 3; layer 2 ties teachers 1 and 2 (0.5) -> 1; layer 3 -> 1.
    s0 = np.array([[0.1, 0.6, 0.9], [0.2, 0.4, 0.1], [0.9, 0.3, 0.2]])
    s1 = np.array([[0.1, 0.4, 0.7], [0.4, 0.6, 0.1], [0.9, 0.3, 0.2]])
    e2 = np.array([[0.0, 0.0, np.nan], [1.0, 0.0, np.nan], [0.0, 1.0, np.nan]])  # layer 3: all NaN
    table = pd.concat([_cka_table({"softkd-s0": s0, "softkd-s1": s1}, "epoch_0001", 1),
                       _cka_table({"softkd-s0": e2}, "epoch_0002", 2),
                       _cka_table({"softkd-s0": np.ones((3, 3))}, "best", 2)])
    match = plots.cka_best_match(table)
    assert list(match.columns) == ["configuration", "epoch", "layer", "teacher_layer", "cka"]
    assert match["configuration"].eq("softkd").all() and match["epoch"].tolist() == [1, 1, 1, 2, 2, 2]
    assert match["layer"].tolist() == [1, 2, 3, 1, 2, 3]
    assert match["teacher_layer"].tolist()[:5] == [3, 1, 1, 2, 3] and pd.isna(match["teacher_layer"].iloc[5])
    np.testing.assert_allclose(match["cka"].to_numpy()[:5], [0.9, 0.5, 0.8, 1.0, 1.0])

    fig = plots.figure_cka_match(table, title="matches")
    (ax,) = _panels(fig)
    assert ax.get_title() == "(a) softkd" and ax.get_ylabel() == plots.BEST_MATCH_LABEL
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert sorted(lines) == ["layer 1", "layer 2", "layer 3"]
    np.testing.assert_array_equal(lines["layer 1"].get_xdata(), [1, 2])
    np.testing.assert_array_equal(lines["layer 1"].get_ydata(), [3, 2])
    import matplotlib
    from matplotlib.colors import to_rgba

    assert to_rgba(lines["layer 1"].get_color()) == matplotlib.colormaps["viridis"](0.0)
    assert to_rgba(lines["layer 3"].get_color()) == matplotlib.colormaps["viridis"](1.0)
    plots.plt.close(fig)


def test_cka_match_one_panel_per_configuration(stat_tables, tmp_path):
    fig = plots.figure_cka_match(stat_tables["runs"], {"softkd": "SoftKD", "spectralkd_f1": "F1"})
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["(a) SoftKD", "(b) F1"]
    assert all(len(ax.get_lines()) == 3 for ax in panels)  # one line per student layer
    assert [p.suffix for p in plots.save_figure(fig, tmp_path / "match.pdf", dpi=50)] == [".pdf", ".png"]


def test_statistics_panels_on_relative_depth(stat_tables, tmp_path):
    teacher, runs = stat_tables["teacher"], stat_tables["runs"]
    fig = plots.figure_statistics(teacher, runs, {"softkd": "SoftKD", "spectralkd_f1": "F1"}, title="statistics")
    panels = _panels(fig)
    assert len(panels) == len(plots.STATISTICS_PANELS)
    titles = [ax.get_title() for ax in panels]
    assert titles[2] == "(c) svd_rank_p99 at 0.9" and titles[4] == "(e) sep_bandwidth at 0.5"
    assert panels[6].get_yscale() == "log" and panels[0].get_yscale() == "linear"
    ranks = {ln.get_label(): ln for ln in panels[0].get_lines()}
    assert sorted(ranks) == ["F1", "SoftKD", "teacher"] and ranks["teacher"].get_color() == "black"
    t = teacher[teacher["metric"] == "effective_rank"].sort_values("layer")
    np.testing.assert_array_equal(ranks["teacher"].get_xdata(), t["layer"] / 4)
    np.testing.assert_array_equal(ranks["teacher"].get_ydata(), t["value"])
    best = runs[(runs["checkpoint"] == "best") & runs["run_id"].str.startswith("softkd-")]
    mean = best[best["metric"] == "effective_rank"].groupby("layer")["value"].mean()
    np.testing.assert_allclose(ranks["SoftKD"].get_xdata(), np.arange(1, 4) / 3)
    np.testing.assert_allclose(ranks["SoftKD"].get_ydata(), mean.to_numpy(), rtol=1e-15)
    sep = teacher[(teacher["metric"] == "sep_bandwidth") & np.isclose(teacher["level"], 0.5)].sort_values("layer")
    np.testing.assert_array_equal(panels[4].get_lines()[0].get_ydata(), sep["value"])
    assert [p.suffix for p in plots.save_figure(fig, tmp_path / "stats.pdf", dpi=50)] == [".pdf", ".png"]

    alone = plots.figure_statistics(teacher)
    assert {ln.get_label() for ax in _panels(alone) for ln in ax.get_lines()} == {"teacher"}
    plots.plt.close(alone)
    # The level closest to the panel's: a table with SEP at 0.55 only is drawn at 0.55 and says so.
    shifted = teacher[~((teacher["metric"] == "sep_bandwidth") & ~np.isclose(teacher["level"], 0.6))]
    shifted = shifted.assign(level=np.where(shifted["metric"] == "sep_bandwidth", 0.55, shifted["level"]))
    other = plots.figure_statistics(shifted)
    assert _panels(other)[4].get_title() == "(e) sep_bandwidth at 0.55"
    plots.plt.close(other)
    with pytest.raises(UserError, match="no 'pca_dimension' rows; re-run the statistics step"):
        plots.figure_statistics(teacher[teacher["metric"] != "pca_dimension"])


def test_robustness_titles_read_each_profile_and_say_when_one_is_undefined(stat_tables, tmp_path):
    from pipeline_steps.analysis.layer_statistics import statistics_summary

    teacher = stat_tables["teacher"]
    summary = statistics_summary(teacher, 0.1)
    fig = plots.figure_robustness(teacher, summary, title="robustness")
    panels = _panels(fig)
    assert len(panels) == 3 and panels[0].get_shared_y_axes().joined(panels[0], panels[2])
    for ax, (metric, description) in zip(panels, plots.ROBUSTNESS_PROFILES):
        row = summary[summary["metric"] == metric].iloc[0]
        assert ax.get_title() == (f"({'abc'[panels.index(ax)]}) {description}\n{row['shape']} (tol 0.1): min at layer "
                                  f"{int(row['argmin_layer'])}, drop {row['drop']:.2f}, rise {row['rise']:.2f}")
    computed = plots.figure_robustness(teacher, shape_tolerance=0.1)  # the same readings computed here
    assert [ax.get_title() for ax in _panels(computed)] == [ax.get_title() for ax in panels]
    plots.plt.close(computed)
    assert [p.suffix for p in plots.save_figure(fig, tmp_path / "rob.pdf", dpi=50)] == [".pdf", ".png"]

    no_token = (teacher["metric"] == "entropy_without_massive") & teacher["layer"].isin([2, 3])
    holes = teacher.assign(value=teacher["value"].mask(no_token))
    fig = plots.figure_robustness(holes)
    assert _panels(fig)[2].get_title().endswith("undefined at layers 2, 3 (no token kept)")
    assert "min at layer" in _panels(fig)[0].get_title()
    plots.plt.close(fig)


def _teacher_training(teacher: pd.DataFrame, epochs=range(5)) -> pd.DataFrame:
    """The teacher's table as checkpoints of its training: entropy 5 + 0.1 e (|l - 2.5| - 1), a U whose drop
    and rise are 0.1 e bits (counting from epoch 2 with tolerance 0.1)."""
    parts = []
    for e in epochs:
        x = teacher.assign(run_id="teacher", checkpoint=f"epoch_{e:04d}", epoch=e)
        is_e = x["metric"] == "entropy"
        x.loc[is_e, "value"] = 5 + 0.1 * e * (np.abs(x.loc[is_e, "layer"] - 2.5) - 1)
        parts.append(x)
    parts.append(parts[-1].assign(checkpoint="best"))
    return pd.concat(parts, ignore_index=True)


def test_teacher_evolution_reads_the_shape_over_epochs(stat_tables, tmp_path):
    import matplotlib
    from matplotlib.colors import to_rgba

    training = _teacher_training(stat_tables["teacher"])
    fig = plots.figure_teacher_evolution(training, title="teacher", shape_tolerance=0.1)
    left, right = _panels(fig)
    assert right.get_title() == "(b) shape reading: U-shaped at 3 of 5 epochs, first at epoch 2"
    curves = {ln.get_label(): ln for ln in left.get_lines()}
    assert sorted(curves) == ["_epoch 1", "_epoch 2", "_epoch 3", "_epoch 4", "best (epoch 4)", "init (epoch 0)"]
    assert curves["best (epoch 4)"].get_color() == "black"
    assert to_rgba(curves["_epoch 4"].get_color()) == matplotlib.colormaps["viridis"](1.0)
    lines = {ln.get_label(): ln for ln in right.get_lines()}
    np.testing.assert_allclose(lines["drop"].get_ydata(), 0.1 * np.arange(5), atol=1e-12)
    np.testing.assert_allclose(lines["rise"].get_ydata(), 0.1 * np.arange(5), atol=1e-12)
    np.testing.assert_array_equal(lines["tolerance (0.1 bits)"].get_ydata(), [0.1, 0.1])
    assert len(fig.axes) == 3  # and the epoch colorbar
    assert [p.suffix for p in plots.save_figure(fig, tmp_path / "tevo.pdf", dpi=50)] == [".pdf", ".png"]
    with pytest.raises(UserError, match="hold 3 runs"):
        plots.figure_teacher_evolution(stat_tables["runs"])


# --- the figures step ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stat_files(stat_tables):
    """The statistics tables as the steps write them: the teacher's (and its summary), one per run, the
    teacher training's; the teacher's reductions table."""
    from pipeline_steps.analysis.layer_statistics import statistics_summary
    from pipeline_steps.analysis.reductions import reduce_activations

    d = stat_tables["dir"]
    files = {"teacher": d / "teacher.parquet", "summary": d / "teacher_summary.parquet",
             "training": d / "teacher_training.parquet", "reductions": d / "reductions.parquet"}
    stat_tables["teacher"].to_parquet(files["teacher"], index=False)
    statistics_summary(stat_tables["teacher"], 0.1).to_parquet(files["summary"], index=False)
    _teacher_training(stat_tables["teacher"]).to_parquet(files["training"], index=False)
    reduce_activations(stat_tables["teacher_npz"], shape_tolerance=0.1, progress=False)[0].to_parquet(
        files["reductions"], index=False)
    runs = stat_tables["runs"]
    files["runs"] = []
    for run_id, table in runs.groupby("run_id"):
        path = d / f"{run_id}_statistics.parquet"
        table.to_parquet(path, index=False)
        files["runs"].append(str(path))
    return files


def _figures_cli(*args: str) -> int:
    from pipeline_steps.__main__ import main

    return main(["figures", "--config-json", '{"figures": {"dpi": 50}}', *args])


@pytest.mark.parametrize("figure, inputs", [
    ("cka", lambda f: ["--statistics", *f["runs"], "--labels-json", '{"softkd": "SoftKD"}']),
    ("cka_match", lambda f: ["--statistics", *f["runs"]]),
    ("statistics", lambda f: ["--teacher-statistics", str(f["teacher"]), "--statistics", *f["runs"]]),
    ("statistics", lambda f: ["--teacher-statistics", str(f["teacher"])]),
    ("robustness", lambda f: ["--teacher-statistics", str(f["teacher"]), "--teacher-summary", str(f["summary"])]),
    ("robustness", lambda f: ["--teacher-statistics", str(f["teacher"])]),
    ("teacher_evolution", lambda f: ["--statistics", str(f["training"])]),
    ("entropy", lambda f: ["--reductions", str(f["reductions"]), "--teacher-statistics", str(f["teacher"])]),
])
def test_figures_step_draws_the_statistics_figures(stat_files, tmp_path, capsys, figure, inputs):
    out = tmp_path / f"fig_{figure}.pdf"
    assert _figures_cli("--figure", figure, *inputs(stat_files), "--out", str(out)) == 0, capsys.readouterr().err
    assert out.read_bytes().startswith(b"%PDF")
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert capsys.readouterr().out.splitlines() == [str(out), str(out.with_suffix(".png"))]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("figure, inputs, message", [
    ("cka", [], "figure cka needs the distillation runs' statistics tables; pass --statistics"),
    ("cka_match", ["--teacher-statistics", "t.parquet"], "figure cka_match needs the distillation runs' statistics"),
    ("statistics", [], "figure statistics needs the teacher's statistics table; pass --teacher-statistics"),
    ("robustness", ["--statistics", "x.parquet"], "figure robustness needs the teacher's statistics table; pass "
                                                  "--teacher-statistics"),
    ("teacher_evolution", [], "figure teacher_evolution needs the teacher training's statistics table; pass "
                              "--statistics"),
    ("robustness", ["--teacher-statistics", "missing.parquet"], "teacher statistics table not found: missing.parquet"),
])
def test_figures_step_missing_statistics_input_is_a_one_line_error(tmp_path, capsys, figure, inputs, message):
    out = tmp_path / "f.pdf"
    assert _figures_cli("--figure", figure, *inputs, "--out", str(out)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_figures_cli_missing_flag_exits_2_with_one_error_line(tmp_path):
    from conftest import assert_one_line_error, run_step

    proc = run_step("figures", "--figure", "robustness", "--out", str(tmp_path / "f.pdf"))
    assert_one_line_error(proc, "figure robustness needs the teacher's statistics table", "--teacher-statistics")
