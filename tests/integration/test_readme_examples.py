"""The README's examples run as written, on the embedded local cluster, in seconds."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO, Workspace


def _examples() -> list[str]:
    """The Python blocks of the README's Example section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_example_section_has_the_headline_and_the_nested_example() -> None:
    headline, nested = _examples()
    assert "def sleep_sum" in headline and "def total" in nested


@pytest.mark.parametrize("which, expected", [
    (0, str([x + x + 1 for x in range(100)])), (1, "49995000")])
def test_a_readme_example_runs_as_written(workspace: Workspace, which: int,
                                          expected: str) -> None:
    workspace.write("main.py", _examples()[which])
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": ""}, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == expected, out.stderr[-3000:]
