"""The public API type-checks under mypy --strict, and calls return Response[T]."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api


@pytest.mark.long
def test_a_call_is_a_response_of_the_return_type(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""
        from distrib import Response, distributed

        @distributed(platform="*", threads=1)
        def sleep_sum(a: int, b: int) -> int:
            return a + b

        @distributed
        def name(x: str) -> str:
            return x

        reveal_type(sleep_sum(1, 2))
        reveal_type(name("a").unwrap())
        reveal_type(sleep_sum.local(1, 2))
        r: Response[int] = sleep_sum(1, 2)
        """))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        from distrib import distributed

        @distributed
        def f(a: int) -> int:
            return a

        f("not an int")
        """))
    # One mypy run checks both files (most of its time goes to reading distrib and the
    # standard library); each file's lines are told apart by the path that starts them.
    everything, _, code = api.run(["--strict", "--no-incremental", "--cache-dir",
                                   str(tmp_path / "c"), str(script), str(bad)])
    out = "".join(line for line in everything.splitlines(keepends=True)
                  if line.startswith(str(script)))
    assert re.search(r'Revealed type is "distrib._response.Response\[(builtins\.)?int\]"', out), out
    assert re.search(r'Revealed type is "(builtins\.)?str"', out), out
    assert out.count("Revealed type") == 3
    assert "error" not in out.replace("note:", ""), everything
    out = "".join(line for line in everything.splitlines(keepends=True)
                  if line.startswith(str(bad)))
    assert code == 1 and 'incompatible type "str"; expected "int"' in out, everything
    assert "Found 1 error in 1 file" in everything, everything  # (bad.py's, and only it)
