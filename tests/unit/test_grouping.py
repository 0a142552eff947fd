"""The suite's own machinery: ``./run test`` hands a module marked ``xdist_group`` to one
process as a whole, so that its costly fixtures (built environments, a Slurm cluster, SSH
hosts' venvs) are built once. pytest 9.2 keeps test ids where pytest-xdist 3.8 cannot add the
group: every process then built them again, and nothing failed."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("grouping")


def test_a_module_marked_xdist_group_is_one_group(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@grouping"), (
        f"pytest {pytest.__version__} with this pytest-xdist groups no test: install the "
        "versions pyproject.toml asks for")
