"""SECURITY.md names the test behind each claim: every one it names exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _file(name: str) -> Path:
    """A test file as SECURITY.md names it: a path from the repository, or a bare file
    name of tests/security/ (the attacks)."""
    return REPO / name if "/" in name else REPO / "tests" / "security" / name


def references() -> list:
    """(file, test) for each `file.py::test` in SECURITY.md (`test_x_*`: a prefix); a bare
    `::test` is of the file named before it."""
    out, current = [], None
    for path, name in re.findall(r"`([\w/]+\.py)?(?:::(\w+\*?)(?:\[[^\]]*\])?)?`", (REPO / "SECURITY.md").read_text()):
        if path and Path(path).name.startswith("test_"):
            current = _file(path)
        if name:
            out.append((current, name))
    return out


def test_every_test_security_md_names_exists():
    refs = references()
    assert len(refs) > 40
    missing = [f"{path}::{name}" for path, name in refs
               if not re.search(rf"^(async )?def {name.rstrip('*')}{'' if name.endswith('*') else '[(]'}",
                                path.read_text(), re.M)]
    assert missing == []
