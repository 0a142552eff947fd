"""An executor's outcomes on their way to the daemon: one at a time, or in batches under load.

When the daemon has handed this executor more tiny tasks than the one running (it does so
only while every slot is busy), each outcome would cost a write here and a wake-up of the
daemon's loop there. Instead, the outcome of a task that took under ``HOLD_RAN`` waits for the
next ones while two tasks or more are still waiting, up to ``HOLD_MAX`` of them and never
longer than ``HOLD_SECONDS`` (a thread sends those held that long: the task running after
them may be a long one). They then go out together, in order of completion, with one system
call, and the daemon reads them with one read. With no task waiting (a call then a wait, or
the last of a burst), an outcome goes out at once, as before.
"""

from __future__ import annotations

import os
import threading
import time

from distrib.executor._subcalls import Channel
from distrib.wire._pipe_messages import Done

HOLD_RAN = 0.001  # seconds: a task that ran longer sends its outcome (and those held) at once
HOLD_MAX = 16  # outcomes held at most
HOLD_SECONDS = 0.005  # the longest an outcome waits for others (the watch wakes this often)


class Outgoing:
    """The outcomes of one executor, sent through its ``channel`` (under the lock of every
    send on its pipe)."""

    def __init__(self, channel: Channel) -> None:
        self._channel, self._lock = channel, channel.lock
        self._held = channel.held  # (the channel sends them before anything else)
        self._since = 0.0  # when the oldest held outcome was held
        self._armed = threading.Event()  # set while outcomes are held: the watch runs
        self._watch: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that sends outcomes held too long, once started."""
        return self._watch

    def send(self, done: Done, ran: float, waiting: int) -> None:
        """Send ``done`` (of a task that ran ``ran`` seconds), or hold it: ``waiting`` tasks
        are already here to run next."""
        with self._lock:
            if waiting >= 2 and ran < HOLD_RAN and len(self._held) < HOLD_MAX - 1:
                if not self._held:
                    self._since = time.monotonic()
                    self._arm()
                self._held.append(done)
                return
            self._held.append(done)
            self._flush()

    def flush(self) -> None:
        """Send what is held now (anything the channel sends goes after it anyway)."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._channel.send_many(())  # (what is held goes first)

    def _arm(self) -> None:
        if self._watch is None:
            self._watch = threading.Thread(target=self._watching, name="distrib-outcomes",
                                           daemon=True)
            self._watch.start()
            # A task that forks (multiprocessing) while the watch holds the lock would leave
            # its child a lock no one releases, and the child's first print would hang.
            os.register_at_fork(before=self._lock.acquire,
                                after_in_parent=self._lock.release,
                                after_in_child=self._lock.release)
        self._armed.set()

    def _watching(self) -> None:
        """Send outcomes held ``HOLD_SECONDS``; sleep (without waking) while none is held."""
        while True:
            self._armed.wait()
            time.sleep(HOLD_SECONDS)
            with self._lock:
                if not self._held:
                    self._armed.clear()  # (under the lock: a hold re-arms it after)
                elif time.monotonic() - self._since >= HOLD_SECONDS:
                    try:
                        self._flush()
                    except OSError:  # the daemon is gone: the executor's thread sees it too
                        return
