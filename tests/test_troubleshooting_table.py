"""docs/troubleshooting.md promises what vitlit does with each bad input; every line names the tests that back it.
This test keeps those names true: each named file exists and each named test (a ``*`` pattern) is defined there."""

from __future__ import annotations

import fnmatch
import re

from conftest import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def table_rows() -> list[list[str]]:
    lines = (REPO_ROOT / "docs" / "troubleshooting.md").read_text().splitlines()
    start = lines.index("| case | what vitlit does | test |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_every_troubleshooting_line_names_tests_that_exist():
    rows = table_rows()
    assert len(rows) >= 30
    for case, _, tests in rows:
        names = re.findall(r"`([^`]+)`", tests)
        assert names, f"no test named for: {case}"
        file = None
        for name in names:
            if name.startswith("::"):
                assert file, f"{name} without a file before it ({case})"
                pattern = name[2:]
            else:
                file, _, pattern = name.partition("::")
            source = (TESTS / f"{file}.py").read_text()
            if pattern:
                defined = re.findall(r"^def (test_\w+)", source, flags=re.MULTILINE)
                assert fnmatch.filter(defined, pattern), f"tests/{file}.py defines no {pattern} ({case})"
