"""Figure layer choice and rendering (PDF + PNG) from a hand-made reductions table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline_steps import figures, plots
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
