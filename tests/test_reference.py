"""The vendored reference data (reference/) is intact: every file matches its recorded sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def test_reference_files_match_their_checksums() -> None:
    listed = {}
    for line in (REFERENCE / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = sorted(p.relative_to(REFERENCE).as_posix() for p in REFERENCE.rglob("*")
                     if p.is_file() and p.parent != REFERENCE)
    assert sorted(listed) == on_disk
    assert len(on_disk) == 15  # 11 logs, 4 entropy tables
    for name, digest in listed.items():
        assert hashlib.sha256((REFERENCE / name).read_bytes()).hexdigest() == digest, name
