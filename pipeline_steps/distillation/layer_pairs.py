"""Which student block is matched to which teacher block: the paper's "F X, L Y" notation and its controls.

:func:`parse_layer_pairs` turns ``"F1 L1"`` (the first X and last Y blocks of both models) or an explicit
``{"student": [...], "teacher": [...]}`` mapping into ``(student_block, teacher_block)`` pairs checked
against the two depths; :func:`format_layer_pairs` writes them back; :func:`run_layer_pairs` and
:func:`grid_teacher_layers` apply it to the distillation grid.

A claim that *these* layers should be aligned needs controls (work on layer selection in KD finds reversed
and random mappings often do about as well), so two prefixes keep a spec's student blocks and change what they
are paired with: ``"reverse:F1 L1"`` gives them the base's teacher blocks in reverse order, and
``"random:<seed>:F1 L1"`` teacher blocks drawn at random, without replacement, by ``random.Random(seed)``.

Two more specs are chosen from the analysis rather than written down (docs/method.md section 5.2):
``"phase:compression"`` / ``"phase:expansion"`` take the teacher blocks of one phase of the teacher's entropy
profile and pair them with the student blocks at the same relative depth (:func:`phase_pairs`);
``"cka:<entry>[@<checkpoint>]:F1 L1"`` pairs the base's student blocks each with its most similar teacher
block in the CKA matrix of another grid run's checkpoint (:func:`cka_pairs`). :func:`pair_source` says which
analysis a spec needs; the caller reads it (:mod:`pipeline_steps.distillation.pair_evidence`) and passes it
as :class:`PairEvidence`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline_steps.config import DistillRun
from pipeline_steps.errors import UserError

__all__ = ["CONTROLS", "cka_pairs", "cka_reference", "format_layer_pairs", "grid_pair_sources", "grid_teacher_layers",
           "LayerPairs", "PairEvidence", "PairSource", "parse_layer_pairs", "pair_source", "PHASES", "phase_blocks",
           "phase_pairs", "run_layer_pairs"]

LayerPairs = list[tuple[int, int]]


# "F2 L6", "f2l6", "F2, L6", "F1", "L8": F before L, each optional but not both absent.
_SPEC_RE = re.compile(r"^\s*(?:F\s*(\d+))?\s*,?\s*(?:L\s*(\d+))?\s*$", re.IGNORECASE)


_SPEC_HELP = ('use "F<X>", "L<Y>" or "F<X> L<Y>" (e.g. "F1 L1"), a control "reverse:<spec>" or '
              '"random:<seed>:<spec>", "phase:compression", "phase:expansion", "cka:<entry>[@<checkpoint>]:<spec>", '
              'or {"student": [...], "teacher": [...]} with 0-based block indices')

#: Prefixes of the control specs.
CONTROLS = ("reverse", "random")

# "reverse:F1 L1", "random:3:F1 L1": a control prefix, then the base spec.
_CONTROL_RE = re.compile(rf"^\s*({'|'.join(CONTROLS)})\s*:\s*(?:(-?\d+)\s*:\s*)?(.*)$", re.IGNORECASE | re.DOTALL)

#: The phases of an entropy profile ``"phase:<name>"`` can select.
PHASES = ("compression", "expansion")

# "phase:compression"; "cka:softkd:F1 L1", "cka:softkd@best:L2", "cka:softkd@3:F1 L1".
_PHASE_RE = re.compile(r"^\s*phase\s*:\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)
_CKA_RE = re.compile(r"^\s*cka\s*:\s*([^:@\s]*)\s*(?:@\s*([^:\s]*)\s*)?:\s*(.*)$", re.IGNORECASE | re.DOTALL)
# A cka checkpoint: the last epoch's, the best test top-1's, or the one after <N> epochs.
_CHECKPOINT_RE = re.compile(r"^(final|best|\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class PairSource:
    """The analysis a layer-pair spec is chosen from (:func:`pair_source`).

    Attributes:
        kind: ``"phase"`` (the teacher's entropy profile) or ``"cka"`` (a grid run's CKA matrix to the teacher).
        phase: For ``phase``: ``"compression"`` or ``"expansion"``.
        run: For ``cka``: the ``distill.runs`` entry whose checkpoint is read, at the same seed as the run.
        checkpoint: For ``cka``: ``"final"`` (its last epoch), ``"best"`` or ``"epoch_<NNNN>"``.
        base: For ``cka``: the F/L spec whose student blocks are paired.
    """

    kind: str
    phase: str | None = None
    run: str | None = None
    checkpoint: str | None = None
    base: str | None = None


@dataclass(frozen=True)
class PairEvidence:
    """What a ``phase`` or ``cka`` spec is resolved from, read by the caller from the analysis artifacts.

    Attributes:
        teacher_entropy: The teacher's entropy per block (bits, block 0 first), for ``phase``.
        shape_tolerance: The tolerance a phase's change must exceed (``analysis.shape_tolerance``, bits).
        cka: ``[student_depth, teacher_depth]`` linear CKA of a checkpoint's blocks to the teacher's, for ``cka``.
        described: Where the evidence came from (file and checkpoint), for the run's log.
    """

    teacher_entropy: Sequence[float] | None = None
    shape_tolerance: float | None = None
    cka: np.ndarray | None = None
    described: str = ""


def pair_source(spec: str | Mapping[str, Sequence[int]] | None) -> PairSource | None:
    """The analysis ``spec`` is chosen from, or None for a spec written down (F/L, controls, mappings).

    Raises:
        UserError: A malformed ``phase:`` or ``cka:`` spec (unknown phase, no entry, a bad checkpoint, no base).
    """
    if not isinstance(spec, str):
        return None
    phase = _PHASE_RE.match(spec)
    if phase:
        name = phase.group(1).lower()
        if name not in PHASES:
            raise UserError(f"layer-pair spec {spec!r}: unknown phase {phase.group(1)!r}; use "
                            + " or ".join(f'"phase:{p}"' for p in PHASES))
        return PairSource(kind="phase", phase=name)
    cka = _CKA_RE.match(spec)
    if cka is None:
        if re.match(r"^\s*cka\b", spec, re.IGNORECASE):
            raise UserError(f"layer-pair spec {spec!r}: use \"cka:<distill.runs entry>[@<checkpoint>]:<spec>\", "
                            'e.g. "cka:softkd:F1 L1" or "cka:softkd@best:L2"')
        return None
    run, checkpoint, base = cka.group(1), cka.group(2), cka.group(3)
    if not run:
        raise UserError(f"layer-pair spec {spec!r}: name the distill.runs entry whose CKA matrix chooses the "
                        'teacher blocks, e.g. "cka:softkd:F1 L1"')
    if checkpoint is not None and not _CHECKPOINT_RE.match(checkpoint):
        raise UserError(f"layer-pair spec {spec!r}: checkpoint {checkpoint!r} is not final, best or an epoch "
                        'number; e.g. "cka:softkd@best:F1 L1"')
    checkpoint = (checkpoint or "final").lower()
    if checkpoint.isdigit():
        checkpoint = f"epoch_{int(checkpoint):04d}"
    if not base.strip() or _CONTROL_RE.match(base) or _PHASE_RE.match(base) or _CKA_RE.match(base):
        raise UserError(f"layer-pair spec {spec!r}: cka needs a base spec of the F/L form after the checkpoint, "
                        'e.g. "cka:softkd:F1 L1"')
    return PairSource(kind="cka", run=run, checkpoint=checkpoint, base=base.strip())


def parse_layer_pairs(spec: str | Mapping[str, Sequence[int]], student_depth: int,
                      teacher_depth: int, evidence: PairEvidence | None = None) -> LayerPairs:
    """Turn a layer-pair spec into ``(student_block, teacher_block)`` pairs, 0-based, in order.

    ``"F X L Y"`` (the paper's notation) pairs the first X student blocks with the first X teacher blocks
    and the last Y student blocks with the last Y teacher blocks. For a 12-block student and a 24-block
    teacher: ``"F1 L1"`` -> ``[(0, 0), (11, 23)]``; ``"L8"`` -> ``[(4, 16), ..., (11, 23)]``. The controls
    keep the base's student blocks: ``"reverse:F1 L1"`` -> ``[(0, 23), (11, 0)]``; ``"random:0:F1 L1"`` ->
    two distinct teacher blocks drawn by ``random.Random(0).sample(range(24), 2)``, in draw order.
    ``"phase:compression"`` and ``"cka:<entry>:<spec>"`` are resolved from ``evidence``
    (:func:`phase_pairs`, :func:`cka_pairs`).

    Args:
        spec: ``"F1"``, ``"L1"``, ``"F2 L6"`` (case-insensitive, spaces optional, e.g. ``"f2l6"``),
            ``"reverse:<spec>"``, ``"random:<seed>:<spec>"`` (``<spec>`` one of the former), or a mapping
            ``{"student": [...], "teacher": [...]}`` of equal-length 0-based index lists (a teacher block
            may serve several student blocks; a student block only one).
        student_depth: Number of student blocks.
        teacher_depth: Number of teacher blocks.
        evidence: The analysis a ``phase`` or ``cka`` spec is chosen from (ignored by the other specs).

    Returns:
        The pairs, first-X part then last-Y part (or the mapping's order; a phase's in student block order).

    Raises:
        UserError: Malformed spec, X or Y larger than a depth, overlapping first/last sets, an index out of
            range, a repeated student block, a control without a base or seed, more pairs than teacher
            blocks to draw from, no pairs at all, or a ``phase``/``cka`` spec without its evidence, with a
            phase that does not exceed the tolerance, or with a CKA matrix of other depths or with NaN.
    """
    for what, depth in (("student_depth", student_depth), ("teacher_depth", teacher_depth)):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UserError(f"{what} must be a positive integer, got {depth!r}")
    if isinstance(spec, Mapping):
        pairs = _pairs_from_mapping(spec)
    elif isinstance(spec, str):
        source = pair_source(spec)
        control = _CONTROL_RE.match(spec)
        if source is not None:
            pairs = _pairs_from_evidence(spec, source, evidence, student_depth, teacher_depth)
        elif control:
            pairs = _pairs_from_control(spec, control, student_depth, teacher_depth)
        else:
            pairs = _pairs_from_string(spec, student_depth, teacher_depth)
    else:
        raise UserError(f"layer pairs must be a string or a mapping, got {type(spec).__name__}; {_SPEC_HELP}")
    _check_pairs(pairs, student_depth, teacher_depth)
    return pairs


def _pairs_from_string(spec: str, student_depth: int, teacher_depth: int) -> LayerPairs:
    match = _SPEC_RE.match(spec)
    if match is None or (match.group(1) is None and match.group(2) is None):
        raise UserError(f"malformed layer-pair spec {spec!r}; {_SPEC_HELP}")
    limit = min(student_depth, teacher_depth)
    counts: dict[str, int] = {}
    for letter, group in (("F", match.group(1)), ("L", match.group(2))):
        if group is None:
            counts[letter] = 0
            continue
        n = int(group)
        if n < 1:
            raise UserError(f"layer-pair spec {spec!r}: {letter}{n} selects no blocks; drop it or use "
                            f"{letter}1 or more")
        if n > limit:
            raise UserError(f"layer-pair spec {spec!r}: {letter}{n} exceeds a depth (student {student_depth}, "
                            f"teacher {teacher_depth} blocks); use at most {letter}{limit}")
        counts[letter] = n
    first, last = counts["F"], counts["L"]
    if first + last > limit:
        raise UserError(f"layer-pair spec {spec!r}: the first {first} and last {last} blocks overlap (student "
                        f"{student_depth}, teacher {teacher_depth} blocks); make F + L at most {limit}")
    return _first_last_pairs(first, last, student_depth, teacher_depth)


def _pairs_from_control(spec: str, control: re.Match, student_depth: int, teacher_depth: int) -> LayerPairs:
    kind, seed, base_spec = control.group(1).lower(), control.group(2), control.group(3)
    if kind == "random" and seed is None:
        raise UserError(f"layer-pair spec {spec!r}: random needs a seed, e.g. \"random:0:F1 L1\"")
    if kind == "reverse" and seed is not None:
        raise UserError(f"layer-pair spec {spec!r}: reverse takes no seed; use \"reverse:F1 L1\"")
    if not base_spec.strip() or _CONTROL_RE.match(base_spec):
        raise UserError(f"layer-pair spec {spec!r}: a control needs a base spec of the F/L form after the "
                        'prefix, e.g. "reverse:F1 L1"')
    base = _pairs_from_string(base_spec, student_depth, teacher_depth)
    students = [s for s, _ in base]
    if kind == "reverse":
        return list(zip(students, [t for _, t in base][::-1]))
    if len(base) > teacher_depth:
        raise UserError(f"layer-pair spec {spec!r}: {len(base)} pairs but only {teacher_depth} teacher blocks to "
                        "draw from without replacement; use a base with fewer pairs")
    return list(zip(students, random.Random(int(seed)).sample(range(teacher_depth), len(base))))


def phase_blocks(teacher_entropy: Sequence[float], phase: str, *, tol: float) -> tuple[int, int]:
    """The teacher blocks of one phase of its entropy profile: ``(first, last)``, 0-based, inclusive.

    The paper reads the profile as compression (entropy falling from block 0 to its minimum) followed by
    expansion (rising from the minimum to the last block). With ``m`` the first block holding the minimum,
    the compression phase is blocks ``0..m`` and the expansion phase blocks ``m..D-1`` (the minimum belongs to
    both). A phase exists only when its change exceeds the shape tolerance: the drop ``H[0] - H[m]`` for
    compression, the rise ``H[D-1] - H[m]`` for expansion (``profile_summary``'s ``drop`` and ``rise``). A
    profile that only rises has no compression phase, and asking for one is an error, not block 0.

    Args:
        teacher_entropy: The teacher's entropy per block, block 0 first (bits).
        phase: One of :data:`PHASES`.
        tol: The shape tolerance (``analysis.shape_tolerance``, bits).

    Raises:
        UserError: An unknown phase, an empty or non-finite profile, or a phase whose change is at most ``tol``.
    """
    h = np.asarray(teacher_entropy, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)):
        raise UserError("the teacher's entropy profile must be a non-empty list of finite values; rerun the "
                        "teacher's reduce step")
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
    m = int(np.argmin(h))
    change, first, last = ((float(h[0] - h[m]), 0, m) if phase == "compression"
                           else (float(h[-1] - h[m]), m, h.size - 1))
    if not change > tol:
        what = "falls" if phase == "compression" else "rises"
        raise UserError(f"the teacher has no {phase} phase: its entropy {what} by {change:.3f} bits between block "
                        f"{first} and block {last} (its minimum is at block {m}), not more than "
                        f"analysis.shape_tolerance {tol:g}; choose the layers another way (an F/L spec or cka)")
    return first, last


def _round_ratio(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, in integers (no float ties)."""
    return (2 * numerator + denominator) // (2 * denominator)


def phase_pairs(first: int, last: int, student_depth: int, teacher_depth: int) -> LayerPairs:
    """Student blocks at the relative depth of teacher blocks ``first..last``, each with its teacher partner.

    Block ``i`` of a ``D``-block model sits at relative depth ``i / (D - 1)``. The student blocks are those
    whose relative depth lies in ``[first / (T - 1), last / (T - 1)]``; each is paired with the teacher block
    at its own relative depth, ``round(s * (T - 1) / (S - 1))`` (half up), kept inside the phase. If no
    student block falls in that range (a short phase of a deep teacher), the one nearest the phase's middle
    is used. For a 6-block student and a 12-block teacher, blocks 0..4 give ``[(0, 0), (1, 2)]`` and blocks
    4..11 ``[(2, 4), (3, 7), (4, 9), (5, 11)]``.

    Raises:
        UserError: ``first..last`` is not a range of teacher blocks.
    """
    if not 0 <= first <= last < teacher_depth:
        raise UserError(f"teacher blocks {first}..{last} are not a range of a {teacher_depth}-block teacher")
    s_span, t_span = student_depth - 1, teacher_depth - 1
    if s_span == 0 or t_span == 0:
        students = [0] if s_span == 0 else list(range(student_depth))
        return [(s, first) for s in students]
    students = [s for s in range(student_depth) if first * s_span <= s * t_span <= last * s_span]
    if not students:
        students = [_round_ratio((first + last) * s_span, 2 * t_span)]
    return [(s, min(max(_round_ratio(s * t_span, s_span), first), last)) for s in students]


def cka_pairs(students: Sequence[int], cka: np.ndarray) -> LayerPairs:
    """Each student block paired with its most similar teacher block: ``argmax_t cka[s, t]`` (first maximum).

    Args:
        students: Student block indices (0-based), in pair order.
        cka: ``[student_depth, teacher_depth]`` linear CKA of the student's blocks to the teacher's.

    Raises:
        UserError: A student block's row holds NaN (too few images) or is out of the matrix.
    """
    cka = np.asarray(cka, dtype=np.float64)
    pairs = []
    for s in students:
        if not 0 <= s < cka.shape[0]:
            raise UserError(f"student block {s} is not in the CKA matrix ({cka.shape[0]} student blocks)")
        row = cka[s]
        if not np.all(np.isfinite(row)):
            raise UserError(f"the CKA of student block {s} to the teacher has NaN (fewer than 4 analysed images?); "
                            "analyse more images (sample.n_images) or choose the layers another way")
        pairs.append((int(s), int(np.argmax(row))))
    return pairs


def _pairs_from_evidence(spec: str, source: PairSource, evidence: PairEvidence | None, student_depth: int,
                         teacher_depth: int) -> LayerPairs:
    if source.kind == "phase":
        if evidence is None or evidence.teacher_entropy is None or evidence.shape_tolerance is None:
            raise UserError(f"layer-pair spec {spec!r} is chosen from the teacher's entropy profile, which was not "
                            "given; pass the teacher's reductions (results/reductions/teacher.parquet)")
        if len(evidence.teacher_entropy) != teacher_depth:
            raise UserError(f"the teacher's entropy profile has {len(evidence.teacher_entropy)} blocks but the "
                            f"teacher has {teacher_depth}; analyse all its blocks (analysis.layers: all)")
        first, last = phase_blocks(evidence.teacher_entropy, source.phase, tol=float(evidence.shape_tolerance))
        return phase_pairs(first, last, student_depth, teacher_depth)
    if evidence is None or evidence.cka is None:
        raise UserError(f"layer-pair spec {spec!r} is chosen from the CKA matrix of run {source.run!r}, which was "
                        "not given; pass that run's evolution statistics")
    if np.shape(evidence.cka) != (student_depth, teacher_depth):
        raise UserError(f"the CKA matrix of {evidence.described or 'the declared checkpoint'} is "
                        f"{np.shape(evidence.cka)}, not {student_depth} student x {teacher_depth} teacher blocks; "
                        "analyse all blocks of both (analysis.layers: all)")
    base = _pairs_from_string(source.base, student_depth, teacher_depth)
    return cka_pairs([s for s, _ in base], evidence.cka)


def _first_last_pairs(first: int, last: int, student_depth: int, teacher_depth: int) -> LayerPairs:
    pairs = [(i, i) for i in range(first)]
    pairs += [(student_depth - last + j, teacher_depth - last + j) for j in range(last)]
    return pairs


def _pairs_from_mapping(spec: Mapping[str, Sequence[int]]) -> LayerPairs:
    if set(spec) != {"student", "teacher"}:
        raise UserError(f"layer-pair mapping must have exactly the keys 'student' and 'teacher', got "
                        f"{sorted(map(str, spec))}; {_SPEC_HELP}")
    student, teacher = spec["student"], spec["teacher"]
    for key, seq in (("student", student), ("teacher", teacher)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in seq):
            raise UserError(f"layer-pair mapping: '{key}' must be a list of integer block indices, got {seq!r}")
    if len(student) != len(teacher):
        raise UserError(f"layer-pair mapping: 'student' has {len(student)} indices but 'teacher' has "
                        f"{len(teacher)}; give one teacher block per student block")
    return list(zip(student, teacher))


def _check_pairs(pairs: Sequence[tuple[int, int]], student_depth: int, teacher_depth: int) -> None:
    if not pairs:
        raise UserError(f"no layer pairs selected; {_SPEC_HELP}")
    for s, t in pairs:
        if not 0 <= s < student_depth:
            raise UserError(f"student block index {s} out of range for a {student_depth}-block student; "
                            f"use 0..{student_depth - 1}")
        if not 0 <= t < teacher_depth:
            raise UserError(f"teacher block index {t} out of range for a {teacher_depth}-block teacher; "
                            f"use 0..{teacher_depth - 1}")
    students = [s for s, _ in pairs]
    repeated = sorted({s for s in students if students.count(s) > 1})
    if repeated:
        raise UserError(f"student block(s) {repeated} appear in more than one layer pair; pair each student "
                        "block with one teacher block")


def format_layer_pairs(pairs: Sequence[tuple[int, int]], student_depth: int, teacher_depth: int) -> str:
    """The short name of a pair list: ``"F1 L1"`` when it is one, else ``"s0-t3,s5-t7"``.

    ``parse_layer_pairs(format_layer_pairs(p, S, T), S, T) == p`` holds for the short form; where several
    short names give the same pairs (equal depths), the one with the largest F is returned.

    Args:
        pairs: ``(student_block, teacher_block)`` pairs, 0-based.
        student_depth: Number of student blocks.
        teacher_depth: Number of teacher blocks.

    Returns:
        ``"F<X>"``, ``"L<Y>"``, ``"F<X> L<Y>"``, or the explicit comma-separated form; ``""`` for no pairs.
    """
    pairs = [(int(s), int(t)) for s, t in pairs]
    n = len(pairs)
    if n == 0:
        return ""
    limit = min(student_depth, teacher_depth)
    for first in range(n, -1, -1):
        last = n - first
        if n <= limit and _first_last_pairs(first, last, student_depth, teacher_depth) == pairs:
            return " ".join(f"{letter}{k}" for letter, k in (("F", first), ("L", last)) if k)
    return ",".join(f"s{s}-t{t}" for s, t in pairs)




def run_layer_pairs(run: DistillRun, student_depth: int, teacher_depth: int,
                    evidence: PairEvidence | None = None) -> LayerPairs:
    """A grid run's ``(student_block, teacher_block)`` pairs, validated against the two models' depths (none
    for a run without a feature term); ``evidence`` resolves a ``phase`` or ``cka`` spec."""
    if run.layers is None:
        return []
    try:
        return parse_layer_pairs(run.layers, student_depth, teacher_depth, evidence)
    except UserError as exc:
        raise UserError(f"distill.runs entry '{run.name}': {exc}") from None


def grid_pair_sources(runs: Sequence[DistillRun]) -> dict[str, PairSource]:
    """Run id -> the analysis its pairs are chosen from, for the grid's ``phase`` and ``cka`` runs.

    A ``cka`` run reads the run of the entry it names at its own seed, so that entry must be in the grid,
    must not be the run itself, and the references must not form a cycle (each run waits for the other's
    analysis).

    Raises:
        UserError: A malformed spec, an unknown or self-referencing entry, or a cycle of references.
    """
    by_id = {run.run_id: run for run in runs}
    names = {run.name for run in runs}
    sources: dict[str, PairSource] = {}
    for run in runs:
        try:
            source = pair_source(run.layers)
        except UserError as exc:
            raise UserError(f"distill.runs entry '{run.name}': {exc}") from None
        if source is None:
            continue
        if source.kind == "cka" and source.run not in names:
            raise UserError(f"distill.runs entry '{run.name}': cka names '{source.run}', which is not a distill.runs "
                            f"entry; use one of {', '.join(sorted(names - {run.name}))}")
        if source.kind == "cka" and source.run == run.name:
            raise UserError(f"distill.runs entry '{run.name}': cka names the entry itself; name the run whose "
                            "checkpoint chooses the pairs (e.g. softkd)")
        sources[run.run_id] = source
    for run_id in sources:
        seen, current = [run_id], run_id
        while current in sources and sources[current].kind == "cka":
            current = cka_reference(by_id[current], sources[current])
            if current in seen:
                raise UserError("distill.runs: the cka references form a cycle ("
                                + " -> ".join(_entry_name(i, by_id) for i in (*seen, current))
                                + "); let one of them choose its pairs another way")
            seen.append(current)
    return sources


def cka_reference(run: DistillRun, source: PairSource) -> str:
    """The run id whose CKA matrix a ``cka`` run reads: the named entry at the run's own seed."""
    from pipeline_steps.config import format_run_id

    return format_run_id(source.run, run.seed)


def _entry_name(run_id: str, by_id: Mapping[str, DistillRun]) -> str:
    return by_id[run_id].name if run_id in by_id else run_id


def grid_teacher_layers(runs: Sequence[DistillRun], student_depth: int, teacher_depth: int) -> list[int]:
    """Every teacher block some run of the grid pairs with (what the teacher cache must hold).

    A ``phase`` or ``cka`` run's blocks are known only once the analysis it reads exists, and a ``cka`` run's
    analysis is another run's, which itself reads the cache; so a grid with such a run caches every block.
    """
    if grid_pair_sources(runs):
        return list(range(teacher_depth))
    return sorted({t for run in runs for _, t in run_layer_pairs(run, student_depth, teacher_depth)})
