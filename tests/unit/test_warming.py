"""Which Mains hear ``Warmed``, and when: ``worker/_warming.py`` on its own."""

from __future__ import annotations

from distrib.wire import _messages as m
from distrib.worker._corestate import ExecutorRecord
from distrib.worker._events import EnvKey
from distrib.worker._warming import Warming

A, B = b"main-a", b"main-b"


def test_a_wish_starts_once_its_distribution_and_environment_are_ready() -> None:
    w = Warming()
    w.wish(A, "d1", "env1", "ctx", 3)
    ready: set[str] = set()
    assert w.startable(ready.__contains__, ready.__contains__) == []
    ready.add("d1")
    assert w.startable(ready.__contains__, ready.__contains__) == []  # (its environment)
    ready.add("env1")
    ((peer, wish),) = w.startable(ready.__contains__, ready.__contains__)
    assert peer == A and wish.key == EnvKey("d1", 1, "ctx") and wish.count == 3
    assert w.startable(ready.__contains__, ready.__contains__) == []  # (started once)


def test_warmed_is_said_once_every_executor_of_the_key_is_ready_or_gone() -> None:
    w = Warming()
    w.wish(A, "d1", "", "ctx", 2)
    ((_, wish),) = w.startable(lambda d: True, lambda e: True)
    wish.started = 2
    key = EnvKey("d1", 1, "ctx")
    one, two = ExecutorRecord(1, key, ready=True), ExecutorRecord(2, key)
    other = ExecutorRecord(3, EnvKey("d2", 1, "ctx"))  # (another environment's, not ready)
    assert w.done([one, two, other]) == []
    two.ready = True
    ((peer, msg),) = w.done([one, two, other])
    assert peer == A and (msg.dist, msg.executors, msg.why) == ("d1", 2, "")
    assert not w


def test_none_ready_says_why() -> None:
    w = Warming()
    w.wish(A, "d1", "", "ctx", 2)
    w.wish(B, "d1", "", "ctx2", 2)
    for peer, wish in w.startable(lambda d: True, lambda e: True):
        wish.started = 2 if peer == A else 0
    said = dict(w.done([]))
    assert said[A].executors == 0 and "stopped before they were ready" in said[A].why
    assert said[B].executors == 0 and "hold every slot" in said[B].why


def test_a_failed_fetch_or_build_answers_the_mains_waiting_for_it() -> None:
    w = Warming()
    w.wish(A, "d1", "env1", "ctx", 2)
    w.wish(B, "d1", "env2", "ctx", 2)
    assert w.fail("bad blob", dist="d1", peer=B) == [(B, m.Warmed("d1", 0, "bad blob"))]
    assert w.fail("no such package", env="env1") == [(A, m.Warmed("d1", 0, "no such package"))]
    assert not w


def test_a_main_that_leaves_is_forgotten() -> None:
    w = Warming()
    w.wish(A, "d1", "", "ctx", 2)
    w.forget(A)
    assert not w and w.startable(lambda d: True, lambda e: True) == []
