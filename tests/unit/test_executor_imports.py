"""An executor of a built environment of another Python version imports the worker's distrib
with only its pure-Python dependencies: nothing on its import path may need a compiled one
(the worker's zmq, msgspec and psutil are built for the worker's own Python)."""

from __future__ import annotations

import subprocess
import sys


def test_the_executors_code_imports_without_zmq_msgspec_or_psutil() -> None:
    code = ("import sys\n"
            "sys.modules['zmq'] = sys.modules['msgspec'] = sys.modules['psutil'] = None\n"
            "import distrib, distrib.executor._tasks\n"
            "print('imported')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr[-3000:]
