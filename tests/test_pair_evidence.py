"""Layer pairs chosen from the analysis: ``phase:<name>`` from the teacher's entropy profile, ``cka:<entry>:<spec>``
from a grid run's CKA matrix; the readers of their artifacts; the grid's references (golden values)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline_steps.config import distill_runs, layers_text
from pipeline_steps.distillation.layer_pairs import (
    PairEvidence,
    PairSource,
    cka_pairs,
    grid_pair_sources,
    grid_teacher_layers,
    pair_source,
    parse_layer_pairs,
    phase_blocks,
    phase_pairs,
)
from pipeline_steps.distillation.pair_evidence import read_cka_matrix, read_pair_evidence, read_teacher_entropy
from pipeline_steps.errors import UserError

#: A 12-block U: falls 0.9 bits to block 4, rises 1.4 bits to block 11.
U_PROFILE = [4.0, 3.6, 3.4, 3.2, 3.1, 3.3, 3.5, 3.7, 3.9, 4.1, 4.3, 4.5]
#: The default CPU teacher's profile (2026-12-07 run): increasing, no compression.
INCREASING = [3.944, 4.12, 4.222, 4.286, 4.332, 4.384, 4.421, 4.487, 4.531, 4.567, 4.607, 4.665]


def test_phase_blocks_split_at_the_minimum_when_the_change_exceeds_the_tolerance() -> None:
    assert phase_blocks(U_PROFILE, "compression", tol=0.1) == (0, 4)
    assert phase_blocks(U_PROFILE, "expansion", tol=0.1) == (4, 11)
    assert phase_blocks(INCREASING, "expansion", tol=0.1) == (0, 11)
    with pytest.raises(UserError, match=r"no compression phase: its entropy falls by 0\.000 bits") as err:
        phase_blocks(INCREASING, "compression", tol=0.1)
    assert "\n" not in str(err.value)
    # The tolerance is strict: a drop of exactly tol (0.9 bits) does not count.
    with pytest.raises(UserError, match="no compression phase"):
        phase_blocks(U_PROFILE, "compression", tol=0.9)
    assert phase_blocks(U_PROFILE, "compression", tol=0.89) == (0, 4)


def test_phase_pairs_map_by_relative_depth() -> None:
    """Golden values: 6-block student, 12-block teacher (the default CPU models) and 12/24 (the paper's)."""
    assert phase_pairs(0, 4, 6, 12) == [(0, 0), (1, 2)]
    assert phase_pairs(4, 11, 6, 12) == [(2, 4), (3, 7), (4, 9), (5, 11)]
    assert phase_pairs(0, 11, 6, 12) == [(0, 0), (1, 2), (2, 4), (3, 7), (4, 9), (5, 11)]
    assert phase_pairs(0, 9, 12, 24) == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]
    # A phase between two student blocks: the one nearest its middle, its partner kept inside the phase.
    assert phase_pairs(5, 6, 6, 12) == [(3, 6)]
    assert phase_pairs(0, 0, 6, 12) == [(0, 0)]
    assert phase_pairs(0, 5, 1, 12) == [(0, 0)]
    for first in range(12):  # every phase gives distinct student blocks and teacher blocks inside it
        for last in range(first, 12):
            pairs = phase_pairs(first, last, 6, 12)
            assert pairs and len({s for s, _ in pairs}) == len(pairs)
            assert all(first <= t <= last for _, t in pairs)


def test_phase_specs_resolve_from_the_evidence() -> None:
    evidence = PairEvidence(teacher_entropy=U_PROFILE, shape_tolerance=0.1)
    assert parse_layer_pairs("phase:compression", 6, 12, evidence) == [(0, 0), (1, 2)]
    assert parse_layer_pairs(" Phase : Expansion ", 6, 12, evidence) == [(2, 4), (3, 7), (4, 9), (5, 11)]
    with pytest.raises(UserError, match="chosen from the teacher's entropy profile, which was not given"):
        parse_layer_pairs("phase:compression", 6, 12)
    with pytest.raises(UserError, match="has 12 blocks but the teacher has 24"):
        parse_layer_pairs("phase:compression", 12, 24, evidence)


def test_cka_specs_pair_each_student_block_with_its_most_similar_teacher_block() -> None:
    cka = np.array([[0.9, 0.5, 0.2, 0.1], [0.3, 0.8, 0.8, 0.2], [0.1, 0.2, 0.4, 0.7]])
    assert cka_pairs([0, 1, 2], cka) == [(0, 0), (1, 1), (2, 3)]  # ties: the first maximum
    evidence = PairEvidence(cka=cka, described="x")
    assert parse_layer_pairs("cka:softkd:F1 L1", 3, 4, evidence) == [(0, 0), (2, 3)]
    assert parse_layer_pairs("cka:softkd@best:L2", 3, 4, evidence) == [(1, 1), (2, 3)]
    with pytest.raises(UserError, match="is \\(3, 4\\), not 6 student x 12 teacher blocks"):
        parse_layer_pairs("cka:softkd:F1", 6, 12, evidence)
    cka[2, 1] = np.nan
    with pytest.raises(UserError, match="student block 2 to the teacher has NaN"):
        cka_pairs([2], cka)


@pytest.mark.parametrize("spec, match", [
    ("phase:middle", "unknown phase 'middle'"),
    ("cka::F1", "name the distill.runs entry"),
    ("cka:softkd@last:F1", "checkpoint 'last' is not final, best or an epoch"),
    ("cka:softkd:", "needs a base spec"),
    ("cka:softkd:reverse:F1", "needs a base spec"),
    ("cka:softkd", "use \"cka:<distill.runs entry>"),
])
def test_pair_source_errors(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        pair_source(spec)
    assert "\n" not in str(err.value)


def test_pair_source_reads_what_a_spec_needs() -> None:
    assert pair_source("F1 L1") is None and pair_source("reverse:F1") is None
    assert pair_source({"student": [0], "teacher": [1]}) is None and pair_source(None) is None
    assert pair_source("PHASE:compression") == PairSource(kind="phase", phase="compression")
    assert pair_source("cka:softkd:F1 L1") == PairSource(kind="cka", run="softkd", checkpoint="final", base="F1 L1")
    assert pair_source("cka:softkd@3:L1").checkpoint == "epoch_0003"
    assert pair_source("cka: softkd @ best : L1").checkpoint == "best"
    assert layers_text("cka:softkd@best:l1") == "cka:softkd@best:L1"
    assert layers_text("Phase:Compression") == "phase:compression"


def _grid(*entries: dict) -> dict:
    return {"distill": {"runs": list(entries), "seeds": [0, 1], "alpha": 0.9, "tau": 1.0, "beta": 0.2,
                        "train": {"epochs": 2}}}


def test_the_grid_checks_its_cka_references() -> None:
    runs = distill_runs(_grid({"name": "softkd", "method": "softkd"},
                              {"name": "cka", "method": "spectralkd", "layers": "cka:softkd:F1 L1"},
                              {"name": "phase", "method": "spectralkd", "layers": "phase:expansion"}))
    sources = grid_pair_sources(runs)
    assert sorted(sources) == ["cka-s0", "cka-s1", "phase-s0", "phase-s1"]
    # A grid with such a run caches every teacher block: its pairs are known only after the analysis.
    assert grid_teacher_layers(runs, 6, 12) == list(range(12))
    for entries, match in [
        (({"name": "a", "method": "spectralkd", "layers": "cka:nope:F1"},), "names 'nope', which is not"),
        (({"name": "a", "method": "spectralkd", "layers": "cka:a:F1"},), "names the entry itself"),
        (({"name": "a", "method": "spectralkd", "layers": "cka:b:F1"},
          {"name": "b", "method": "spectralkd", "layers": "cka:a:L1"}), r"cycle \(a -> b -> a\)"),
    ]:
        with pytest.raises(UserError, match=match):
            grid_pair_sources(distill_runs(_grid(*entries)))


def test_the_readers_take_the_profile_and_the_matrix_from_the_artifacts(tmp_path) -> None:
    reductions = tmp_path / "teacher.parquet"
    rows = [{"model": "teacher", "checkpoint": "final", "layer": i + 1, "metric": metric, "value": v}
            for i, v in enumerate(U_PROFILE) for metric in ("entropy", "magnitude")]
    pd.DataFrame(rows[::-1]).to_parquet(reductions)  # order on disk does not matter
    assert read_teacher_entropy(reductions) == U_PROFILE
    evidence = read_pair_evidence(PairSource(kind="phase", phase="compression"), teacher_reductions=reductions,
                                  shape_tolerance=0.1)
    assert parse_layer_pairs("phase:compression", 6, 12, evidence) == [(0, 0), (1, 2)]

    statistics = tmp_path / "softkd-s0_statistics.parquet"
    rng = np.random.default_rng(0)
    rows = [{"checkpoint": c, "layer": s + 1, "teacher_layer": t + 1, "metric": "cka", "value": v}
            for c, m in (("epoch_0000", rng.random((3, 4))), ("epoch_0002", rng.random((3, 4))),
                         ("best", rng.random((3, 4))))
            for (s, t), v in np.ndenumerate(m)]
    rows.append({"checkpoint": "epoch_0002", "layer": 1, "teacher_layer": None, "metric": "entropy", "value": 4.0})
    table = pd.DataFrame(rows)
    table["teacher_layer"] = table["teacher_layer"].astype("Int64")
    table.to_parquet(statistics)
    final, described = read_cka_matrix(statistics, "final")
    expected = table[(table.metric == "cka") & (table.checkpoint == "epoch_0002")]["value"].to_numpy().reshape(3, 4)
    assert described == "softkd-s0_statistics.parquet at epoch_0002" and np.array_equal(final, expected)
    assert not np.array_equal(read_cka_matrix(statistics, "best")[0], final)
    with pytest.raises(UserError, match="no CKA rows of checkpoint epoch_0001; it has best, epoch_0000, epoch_0002"):
        read_cka_matrix(statistics, "epoch_0001")
    with pytest.raises(UserError, match="not found"):
        read_teacher_entropy(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="unreadable"):
        read_cka_matrix(tmp_path / "bad.parquet", "final")
