"""Which student block is matched to which teacher block: the paper's "F X, L Y" notation and its controls.

:func:`parse_layer_pairs` turns ``"F1 L1"`` (the first X and last Y blocks of both models) or an explicit
``{"student": [...], "teacher": [...]}`` mapping into ``(student_block, teacher_block)`` pairs checked
against the two depths; :func:`format_layer_pairs` writes them back; :func:`run_layer_pairs` and
:func:`grid_teacher_layers` apply it to the distillation grid.

A claim that *these* layers should be aligned needs controls (work on layer selection in KD finds reversed
and random mappings often do about as well), so two prefixes keep a spec's student blocks and change what they
are paired with: ``"reverse:F1 L1"`` gives them the base's teacher blocks in reverse order, and
``"random:<seed>:F1 L1"`` teacher blocks drawn at random, without replacement, by ``random.Random(seed)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from pipeline_steps.config import DistillRun
from pipeline_steps.errors import UserError

__all__ = ["CONTROLS", "format_layer_pairs", "grid_teacher_layers", "LayerPairs", "parse_layer_pairs", "run_layer_pairs"]

LayerPairs = list[tuple[int, int]]


# "F2 L6", "f2l6", "F2, L6", "F1", "L8": F before L, each optional but not both absent.
_SPEC_RE = re.compile(r"^\s*(?:F\s*(\d+))?\s*,?\s*(?:L\s*(\d+))?\s*$", re.IGNORECASE)


_SPEC_HELP = ('use "F<X>", "L<Y>" or "F<X> L<Y>" (e.g. "F1 L1"), a control "reverse:<spec>" or '
              '"random:<seed>:<spec>", or {"student": [...], "teacher": [...]} with 0-based block indices')

#: Prefixes of the control specs.
CONTROLS = ("reverse", "random")

# "reverse:F1 L1", "random:3:F1 L1": a control prefix, then the base spec.
_CONTROL_RE = re.compile(rf"^\s*({'|'.join(CONTROLS)})\s*:\s*(?:(-?\d+)\s*:\s*)?(.*)$", re.IGNORECASE | re.DOTALL)


def parse_layer_pairs(spec: str | Mapping[str, Sequence[int]], student_depth: int,
                      teacher_depth: int) -> LayerPairs:
    """Turn a layer-pair spec into ``(student_block, teacher_block)`` pairs, 0-based, in order.

    ``"F X L Y"`` (the paper's notation) pairs the first X student blocks with the first X teacher blocks
    and the last Y student blocks with the last Y teacher blocks. For a 12-block student and a 24-block
    teacher: ``"F1 L1"`` -> ``[(0, 0), (11, 23)]``; ``"L8"`` -> ``[(4, 16), ..., (11, 23)]``. The controls
    keep the base's student blocks: ``"reverse:F1 L1"`` -> ``[(0, 23), (11, 0)]``; ``"random:0:F1 L1"`` ->
    two distinct teacher blocks drawn by ``random.Random(0).sample(range(24), 2)``, in draw order.

    Args:
        spec: ``"F1"``, ``"L1"``, ``"F2 L6"`` (case-insensitive, spaces optional, e.g. ``"f2l6"``),
            ``"reverse:<spec>"``, ``"random:<seed>:<spec>"`` (``<spec>`` one of the former), or a mapping
            ``{"student": [...], "teacher": [...]}`` of equal-length 0-based index lists (a teacher block
            may serve several student blocks; a student block only one).
        student_depth: Number of student blocks.
        teacher_depth: Number of teacher blocks.

    Returns:
        The pairs, first-X part then last-Y part (or the mapping's order).

    Raises:
        UserError: Malformed spec, X or Y larger than a depth, overlapping first/last sets, an index out of
            range, a repeated student block, a control without a base or seed, more pairs than teacher
            blocks to draw from, or no pairs at all.
    """
    for what, depth in (("student_depth", student_depth), ("teacher_depth", teacher_depth)):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UserError(f"{what} must be a positive integer, got {depth!r}")
    if isinstance(spec, Mapping):
        pairs = _pairs_from_mapping(spec)
    elif isinstance(spec, str):
        control = _CONTROL_RE.match(spec)
        pairs = (_pairs_from_control(spec, control, student_depth, teacher_depth) if control
                 else _pairs_from_string(spec, student_depth, teacher_depth))
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




def run_layer_pairs(run: DistillRun, student_depth: int, teacher_depth: int) -> LayerPairs:
    """A grid run's ``(student_block, teacher_block)`` pairs, validated against the two models' depths (none
    for a run without a feature term)."""
    if run.layers is None:
        return []
    try:
        return parse_layer_pairs(run.layers, student_depth, teacher_depth)
    except UserError as exc:
        raise UserError(f"distill.runs entry '{run.name}': {exc}") from None


def grid_teacher_layers(runs: Sequence[DistillRun], student_depth: int, teacher_depth: int) -> list[int]:
    """Every teacher block some run of the grid pairs with (what the teacher cache must hold)."""
    return sorted({t for run in runs for _, t in run_layer_pairs(run, student_depth, teacher_depth)})
