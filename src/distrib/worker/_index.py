"""Whether the package index a build would use answers, asked once before the build.

uv tries an index that does not answer for its whole HTTP timeout, several times (about a
minute with no network), and then may report a package "not found". One request with a short
deadline tells the worker at once; the build then runs offline (uv's cache may hold it all)
and, when that fails, its error says the index could not be reached and what to do.
"""

from __future__ import annotations

import threading

PYPI = "https://pypi.org/simple/"
PROBE_SECONDS = 4.0  # the whole question, name lookup included


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str:
    """Why the index at ``url`` cannot be reached ("" when it answers anything at all, an
    HTTP error too). The proxies uv would use (``HTTPS_PROXY``...) are used here too."""
    import urllib.error  # (here: 18 ms every daemon's start would pay, for a build's question)
    import urllib.request

    outcome: list[str] = []

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD",
                                         headers={"User-Agent": "distrib-worker"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append("")
        except urllib.error.HTTPError:
            outcome.append("")  # (it answered)
        except urllib.error.URLError as exc:
            outcome.append(str(exc.reason))
        except (OSError, ValueError) as exc:
            outcome.append(str(exc) or type(exc).__name__)

    # The name lookup has no timeout of its own: the question runs in a thread left behind
    # when it takes too long.
    thread = threading.Thread(target=ask, name="distrib-index-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def advice(url: str, worker: str, why: str) -> str:
    """What the user reads when a build failed with the index out of reach."""
    return (f"the package index {url} could not be reached from worker {worker} ({why}), "
            "and uv's cache there did not hold everything. Give the worker network access to "
            "the index, or have its owner point it at an index or a folder of wheels it can "
            "reach (distrib worker --index-url URL, or --find-links DIR --no-index), or "
            "install these versions into the Python the worker runs (its tasks then use them "
            "as they are)")
