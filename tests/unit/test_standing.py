"""An executor's standing on its machine: the niceness of its scheduling group, which the
kernel lets a process without CAP_SYS_ADMIN change only once per 0.1 s on the whole machine
(executors starting together in sandboxes are refused, and ask again)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import distrib

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/autogroup") or shutil.which("bwrap") is None,
    reason="needs the kernel's session groups (autogroup) and bubblewrap to drop capabilities")

# In a session of its own at nice 10, without capabilities: change the group's niceness (to
# 5), so that the executor's ask just after is refused, until one is (the window is 0.1 s: a
# busy machine may let it pass); then the executor's own way must get 10 in the end.
REFUSED = """
import os, time
from distrib.executor import _standing

def group_nice():
    with open("/proc/self/autogroup") as f:
        return int(f.read().split()[-1])

os.setpriority(os.PRIO_PROCESS, 0, 10)
try:
    os.setsid()  # (a group of its own)
except OSError:  # (a session leader already)
    pass
refused = False
deadline = time.monotonic() + 60
while not refused and time.monotonic() < deadline:
    if _standing._set_group_nice(5) is True:
        _standing._nice_group()
        refused = _standing._group_nice_pending == 10
print("refused", refused, flush=True)
_standing.start_watching(0)
while group_nice() != 10 and time.monotonic() < deadline:
    time.sleep(0.01)
print("group", group_nice(), "pending", _standing._group_nice_pending, flush=True)
"""


def test_a_group_niceness_the_kernel_refuses_is_asked_again_until_it_holds() -> None:
    src = str(Path(distrib.__file__).parent.parent)
    proc = subprocess.Popen(
        ["bwrap", "--unshare-all", "--unshare-user", "--new-session", "--cap-drop", "ALL",
         "--uid", "65534", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
         "--setenv", "PYTHONPATH", src, sys.executable, "-c", REFUSED],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert out.split() == ["refused", "True", "group", "10", "pending", "0"], (out, err)
