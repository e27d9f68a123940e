"""Shape readings of the authors' published entropy profiles (reference/entropy/), as README tabulates them.

The README table "Shape readings of profiles" puts the paper's words (Section 5) beside the reading of
:func:`pipeline_steps.analysis.shapes.profile_summary` at the default tolerance. This test recomputes every row
from the vendored CSVs, so the table cannot drift from the code or the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_steps.config import load_schema
from pipeline_steps.analysis.shapes import profile_shape, profile_summary

ROOT = Path(__file__).resolve().parents[1]
ENTROPY = ROOT / "reference" / "entropy"
DEFAULT_TOL = load_schema()["properties"]["analysis"]["properties"]["shape_tolerance"]["default"]


def published_profile(table: str, checkpoint: str) -> np.ndarray:
    """One row (``checkpoint_epoch_30`` ... ``model_best``) of an authors' entropy CSV, Layer_1 first."""
    frame = pd.read_csv(ENTROPY / table, index_col="Model/Epoch")
    assert list(frame.columns) == [f"Layer_{i}" for i in range(1, 13)]
    return frame.loc[checkpoint].to_numpy(dtype=np.float64)


def stable_interval(values: np.ndarray, tol: float) -> tuple[float, float]:
    """The interval [lo, hi) of tolerances that give the same class as ``tol``.

    Every quantity the definition compares with the tolerance is a difference between two layers, so
    the class can only change at one of those differences; between two consecutive ones it is constant.
    """
    diffs = np.unique(np.abs(values[:, None] - values[None, :]))  # sorted, starts at 0
    classes = [profile_shape(values, tol=d) for d in diffs]        # class on [diffs[k], diffs[k + 1])
    k = int(np.searchsorted(diffs, tol, side="right")) - 1
    shape = classes[k]
    lo = k
    while lo > 0 and classes[lo - 1] == shape:
        lo -= 1
    hi = k + 1
    while hi < len(diffs) and classes[hi] == shape:
        hi += 1
    return float(diffs[lo]), float(diffs[hi]) if hi < len(diffs) else float("inf")


def readme_rows() -> list[list[str]]:
    """The cells of the README table of readings of the published profiles."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Shape readings of profiles", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines()
            if line.startswith("| ") and ".csv" in line]
    assert len(rows) == 7
    return rows


def test_default_tolerance_is_the_one_in_the_presets():
    import yaml
    for preset in ("params.yaml", "configs/smoke.yaml", "configs/paper.yaml"):
        assert yaml.safe_load((ROOT / preset).read_text())["analysis"]["shape_tolerance"] == DEFAULT_TOL == 0.1


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: f"{r[0].split()[0]}:{r[1]}")
def test_readme_table_row_is_the_computed_reading(row):
    table, checkpoint, _words, shape, argmin, drop, rise, interval, _agrees = row
    values = published_profile(table.split()[0], checkpoint)
    s = profile_summary(values, tol=DEFAULT_TOL)
    lo, hi = stable_interval(values, DEFAULT_TOL)
    assert (s["shape"], str(s["argmin_layer"]), f"{s['drop']:.3f}", f"{s['rise']:.3f}") == \
        (shape, argmin, drop, rise)
    assert f"[{lo:.3f}, {hi:.3f})" == interval


def test_published_readings_against_the_paper():
    """The readings README reports, with numbers checked against the CSV values by hand."""
    soft_30 = published_profile("SoftKD.csv", "checkpoint_epoch_30")
    assert soft_30[0] - soft_30[1] == pytest.approx(0.0396, abs=1e-4)  # the only fall: layer 1 -> 2
    assert profile_shape(soft_30, tol=0.0) == "u_shaped"                # tolerance 0 read it as a U
    assert profile_shape(soft_30, tol=DEFAULT_TOL) == "increasing"      # the paper: increasing

    soft_best = profile_summary(published_profile("SoftKD.csv", "model_best"), tol=DEFAULT_TOL)
    assert (soft_best["shape"], soft_best["argmin_layer"]) == ("u_shaped", 4)  # the paper: U, min ~4-5

    first = profile_summary(published_profile("SpectralKD10.csv", "model_best"), tol=DEFAULT_TOL)
    both = profile_summary(published_profile("SpectralKD11.csv", "model_best"), tol=DEFAULT_TOL)
    assert first["shape"] == both["shape"] == "u_shaped"
    # The paper calls First "largely increasing, lacking the U" and First+Last a "minimal U", yet First's drop
    # is the larger: no one tolerance gives both words.
    assert first["drop"] == pytest.approx(2.5463612263000535 - 2.1633852926802466)
    assert both["drop"] == pytest.approx(1.3363489511872737 - 1.060625281838567)
    assert first["drop"] > both["drop"]
    first_values = published_profile("SpectralKD10.csv", "model_best")
    both_values = published_profile("SpectralKD11.csv", "model_best")
    for tol in np.linspace(0.0, 2.0, 201):
        assert not (profile_shape(first_values, tol=tol) == "increasing"
                    and profile_shape(both_values, tol=tol) == "u_shaped")
