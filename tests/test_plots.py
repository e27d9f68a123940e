"""Figure layer choice and rendering (PDF + PNG) from a hand-made reductions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline_steps.steps import figures
from pipeline_steps.reporting import plots
from pipeline_steps.errors import UserError

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
