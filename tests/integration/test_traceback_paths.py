"""A task's remote traceback names the user's own files on the Main, not the worker's copy."""

from __future__ import annotations

import os

import pytest

from tests.helpers import Workspace

HELPER = """
    def fail(x):
        raise ValueError(f"bad {x}")
    """

SCRIPT = """
    import importlib, os, traceback
    import distrib
    from distrib import distributed
    from lib.deep import helper

    @distributed
    def task(x):
        return helper.fail(x)

    @distributed
    def gone():
        # A class only the worker has (written by the task): the Main gets a RemoteError.
        with open("lib/deep/onlythere.py", "w") as f:
            f.write("class Gone(Exception):\\n    pass\\n\\ndef fail():\\n    raise Gone('x')\\n")
        importlib.import_module("lib.deep.onlythere").fail()

    if __name__ == "__main__":
        try:
            task(1).unwrap(timeout=60)
        except ValueError as exc:
            print("".join(traceback.format_exception(exc)))
        print("=====")
        try:
            gone().unwrap(timeout=60)
        except distrib.RemoteError as exc:
            print("".join(traceback.format_exception(exc)))
    """


@pytest.mark.parametrize("extra", [("--no-sandbox",), ()], ids=["no sandbox", "sandbox"])
def test_a_remote_traceback_names_the_workspace_files_on_the_main(
        workspace: Workspace, start_worker, extra: tuple[str, ...]) -> None:
    workspace.write("lib/__init__.py", "")
    workspace.write("lib/deep/__init__.py", "")
    workspace.write("lib/deep/helper.py", HELPER)
    workspace.write("main.py", SCRIPT)
    worker = start_worker(threads=1, extra=extra)
    out = workspace.run("main.py", env={"DISTRIB_WORKERS": worker.address})
    assert out.returncode == 0, out.stderr[-3000:]
    rebuilt, remote_error = out.stdout.split("=====")
    root = os.path.realpath(workspace.root)
    for text in (rebuilt, remote_error):
        assert f'File "{root}/main.py", line ' in text, text
        assert str(worker.cache_dir) not in text and "/envs/" not in text, text
    # The rebuilt frames and the remote text both name the module's file here, and the
    # frames show its source line, read from the user's file.
    assert rebuilt.count(f'File "{root}/lib/deep/helper.py", line 3, in fail') == 2, rebuilt
    assert 'raise ValueError(f"bad {x}")' in rebuilt
    assert f'File "{root}/lib/deep/onlythere.py", line 5, in fail' in remote_error
