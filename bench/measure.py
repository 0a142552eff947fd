"""One measurement in a fresh process, started by the harness (``bench.__main__``).

    python -m bench.measure WORKLOAD FRAMEWORK PARAMS_JSON   run one workload, print its metrics

Results go to stdout on lines tagged ``VERSION_TAG`` and ``RESULT_TAG`` so that whatever a
framework prints around them does not matter. distrib's executors import this file as the
main script, hence the ``__main__`` guard.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys

from bench import workloads
from bench.frameworks import load

VERSION_TAG = "BENCH-VERSION "
RESULT_TAG = "BENCH-RESULT "


def main(argv: list[str]) -> None:
    """Run what ``argv`` asks for (see the module docstring)."""
    workload, name, params = workloads.WORKLOADS[argv[0]], argv[1], json.loads(argv[2])
    # Printed first, so that a measurement that fails still shows which version failed.
    print(VERSION_TAG + load(name).version(), flush=True)
    metrics = workload.driver(name, params)
    print(RESULT_TAG + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    # The harness sends SIGUSR1 before killing a measurement that ran past its timeout: the
    # stacks of every thread then show where it hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    main(sys.argv[1:])
