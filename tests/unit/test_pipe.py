"""The executor pipe: its messages' codec (round trips, and every malformed header is a
``PipeError``), and its framing on a real socketpair (small, large and broken messages)."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distrib._errors import ProtocolError
from distrib.wire import _pipe_messages as pm
from distrib.wire._messages import Outcome
from distrib.wire._pipe import Pipe, PipeError, decode, encode
from tests.helpers import ended


def pair() -> tuple[Pipe, Pipe]:
    a, b = socket.socketpair()
    return Pipe(a), Pipe(b)


# One of each message, every field set to something other than its default.
EXAMPLES: list[pm.PipeMessage] = [
    pm.Context(["script.py", "-v"], {"A": "1"}, ["numpy"], 1 << 20),
    pm.Become(["template"], {"OMP_NUM_THREADS": "2"}, "/env", ["/env", "main.py", "/runs", ""]),
    pm.Run(7, "/objects", {"distrib-12-ab": 1}, 12, (b"call", b"frame")),
    pm.Skip(7),
    pm.ChildOutcome(7, 2, "error", {"type": "ValueError"}, (b"error",)),
    pm.Ready("overlay"),
    pm.NoFork("importing the workspace started 1 thread(s)"),
    pm.Skipped(7),
    pm.EnvError({"type": "ImportError", "message": "no"}, (b"sealed",)),
    pm.Out(7, 2, "a line\n"),
    pm.Done(7, Outcome.TIMEOUT, {"k": "v"}, {"distrib-12-cd": 0}, (b"", b"result")),
    pm.Call(7, 3, "f", ["linux-x86_64"], 2, 1, 2.5, ["out/*"], "direct", "g", (b"call",)),
    pm.Call(7, 3, "f", [], 1, 0, None, [], "", "g", (b"call",)),
    pm.CancelChild(7, 3),
    pm.Park(7),
    pm.Unpark(7),
    pm.Leaving(7, "task f left 2 threads running"),
]


def through_msgpack(message: pm.PipeMessage) -> tuple[bytes, list[Any]]:
    head, frames = encode(message)
    return head, list(frames)


def test_every_message_type_has_an_example() -> None:
    assert {type(x) for x in EXAMPLES} == set(pm.ALL_MESSAGES)
    assert len({cls.VERB for cls in pm.ALL_MESSAGES}) == len(pm.ALL_MESSAGES) == len(pm.Verb)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(message: pm.PipeMessage) -> None:
    assert decode(*through_msgpack(message)) == message


def test_messages_round_trip_over_a_socketpair_in_one_send() -> None:
    left, right = pair()
    left.send_many(EXAMPLES)
    got = [right.recv() for _ in EXAMPLES]
    assert [type(x) for x in got] == [type(x) for x in EXAMPLES]
    for sent, read in zip(EXAMPLES, got):
        if hasattr(sent, "frames"):  # (frames arrive as bytearrays)
            assert encode(read)[0] == encode(sent)[0]  # (the headers)
            assert [bytes(f) for f in getattr(read, "frames")] == list(getattr(sent, "frames"))
        else:
            assert read == sent
    assert not right.buffered()
    left.close()
    right.close()


_ECHO = """
import socket, sys
sys.modules["msgspec"] = None  # (as in an executor of another Python version)
from distrib.wire import _pipe
assert _pipe.msgspec is None
pipe = _pipe.Pipe(socket.socket(fileno=int(sys.argv[1])))
for _ in range(int(sys.argv[2])):
    pipe.send(pipe.recv())
"""


def test_an_executor_without_msgspec_speaks_the_same_messages() -> None:
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno()),
                              str(len(EXAMPLES))], pass_fds=[theirs.fileno()], text=True)
    theirs.close()
    pipe = Pipe(ours)
    with ended(child):  # (killed if it hangs or an assertion fails)
        pipe.send_many(EXAMPLES)  # (checked again here as they come back)
        got = [pipe.recv() for _ in EXAMPLES]
        assert child.wait(60) == 0
    for sent, read in zip(EXAMPLES, got):
        assert type(read) is type(sent)
        if hasattr(sent, "frames"):
            assert encode(read)[0] == encode(sent)[0]  # (the headers)
            assert [bytes(f) for f in getattr(read, "frames")] == list(getattr(sent, "frames"))
        else:
            assert read == sent
    pipe.close()


def test_small_and_large_messages_round_trip() -> None:
    left, right = pair()
    big = os.urandom(8 << 20)  # larger than the socket buffer: needs the reader meanwhile
    got: list[pm.PipeMessage] = []
    reader = threading.Thread(target=lambda: got.extend(right.recv() for _ in range(3)))
    reader.start()
    left.send(pm.Ready("copy"))
    left.send(pm.Run(7, "", {}, 0, (b"head", memoryview(big))))
    left.send(pm.Done(7, Outcome.OK, {"k": "v"}, {}, (bytearray(b"x"),)))
    reader.join(60)
    assert got[0] == pm.Ready("copy")
    run = got[1]
    assert isinstance(run, pm.Run) and run.run_id == 7 and bytes(run.frames[0]) == b"head"
    assert bytes(run.frames[1]) == big
    assert got[2] == pm.Done(7, Outcome.OK, {"k": "v"}, {}, (bytearray(b"x"),))
    left.close()
    right.close()


def test_a_closed_or_broken_peer_is_eof() -> None:
    left, right = pair()
    left.sock.sendall(struct.pack("<II", 1 << 30, 0))  # a header larger than allowed
    with pytest.raises(EOFError):
        right.recv()
    left.close()
    with pytest.raises(EOFError):
        right.recv()
    right.close()


def test_a_burst_is_read_from_one_buffer_and_reported_as_buffered() -> None:
    left, right = pair()
    left.send_many([pm.Run(i, "", {}, 0, (b"payload %d" % i,)) for i in range(50)])
    first = right.recv()
    assert first == pm.Run(0, "", {}, 0, (bytearray(b"payload 0"),))
    assert right.buffered() and right.readable()  # the rest came in with the first read
    rest = [right.recv() for _ in range(49)]
    assert [x.run_id for x in rest if isinstance(x, pm.Run)] == list(range(1, 50))
    assert not right.buffered()
    left.close()
    right.close()


def _raw(sock: socket.socket, head: bytes, frames: Sequence[bytes] = ()) -> None:
    sock.sendall(struct.pack("<II", len(head), len(frames))
                 + struct.pack(f"<{len(frames)}Q", *map(len, frames)) + head + b"".join(frames))


def test_a_malformed_message_is_read_whole_and_the_next_one_follows() -> None:
    left, right = pair()
    _raw(left.sock, msgpack.packb(["done", 7, "ok"]), [b"frame"])  # a field short
    _raw(left.sock, msgpack.packb(["ready", "copy"])[:-1])  # not msgpack
    left.send(pm.Skipped(7))
    with pytest.raises(PipeError, match="Done: expected 4 fields, got 2"):
        right.recv()
    with pytest.raises(PipeError, match="not valid msgpack"):
        right.recv()
    assert right.recv() == pm.Skipped(7)
    left.close()
    right.close()


@pytest.mark.parametrize("header, frames, why", [
    # not a header at all
    ({"verb": "ready"}, [], "not a non-empty list"),
    ([], [], "not a non-empty list"),
    ("ready", [], "not a non-empty list"),
    # unknown verbs
    (["hello"], [], "unknown verb 'hello'"),
    ([7, 1], [], "unknown verb 7"),
    ([["run"], 1], [], "unknown verb"),
    # missing and extra fields (truncated headers)
    (["ready"], [], "Ready: expected 1 fields, got 0"),
    (["ready", "copy", "more"], [], "Ready: expected 1 fields, got 2"),
    (["run", 7, "", {}], [], "Run: expected 4 fields, got 3"),
    (["call", 7, 3, "f", [], 1, 0, None, [], ""], [b"c"], "Call: expected 10 fields, got 9"),
    (["cancel_child", 7, 3, 4], [], "CancelChild: expected 2 fields, got 3"),
    # wrong types
    (["skip", "7"], [], "Skip: expected int, got str"),
    (["skip", True], [], "Skip: expected int, got bool"),
    (["skip", 7.0], [], "Skip: expected int, got float"),
    (["ready", b"copy"], [], "Ready: expected str, got bytes"),
    (["out", 7, "1", "text"], [], "Out: expected int"),
    (["done", 7, "fine", {}, {}], [], "Done: unknown outcome 'fine'"),
    (["done", 7, ["ok"], {}, {}], [], "Done: unknown outcome"),
    (["done", 7, "ok", [], {}], [], "Done: expected a map of str to str"),
    (["done", 7, "ok", {"k": 1}, {}], [], "Done: expected a map of str to str"),
    (["done", 7, "ok", {}, {"distrib-1-a": "0"}], [], "Done: expected a map of str to int"),
    (["env_error", None], [b"e"], "EnvError: expected a map of str to str"),
    (["context", "argv", {}, [], 0], [], "Context: expected a list of str"),
    (["context", [1], {}, [], 0], [], "Context: expected a list of str"),
    (["call", 7, 3, "f", [], 1, 0, "soon", [], "", "g"], [b"c"], "Call: expected a number"),
    (["call", 7, 3, "f", [], 1, 0, True, [], "", "g"], [b"c"], "Call: expected a number"),
    # values out of range
    (["call", 7, 3, "f", [], 0, 0, None, [], "", "g"], [b"c"], "Call: threads out of range"),
    (["call", 7, -1, "f", [], 1, 0, None, [], "", "g"], [b"c"], "Call: child out of range"),
    (["call", 7, 3, "f", [], 1, 1 << 31, None, [], "", "g"], [b"c"],
     "Call: retries out of range"),
    (["call", 7, 3, "f", ["p"] * 65, 1, 0, None, [], "", "g"], [b"c"],
     "Call: platforms out of range"),
    (["call", 7, 3, "f", [], 1, 0, None, ["o"] * 257, "", "g"], [b"c"],
     "Call: outputs out of range"),
    (["call", 7, 3, "f", [], 1, 0, None, [], "sideways", "g"], [b"c"],
     "Call: unknown redistribution 'sideways'"),
    # a payload on a message that has none
    (["skipped", 7], [b"x"], "Skipped: expected no payload, got 1 frames"),
])
def test_malformed_headers_are_a_pipe_error(header: Any, frames: list[Any], why: str) -> None:
    with pytest.raises(PipeError, match=why):
        decode(msgpack.packb(header), frames)


def test_a_pipe_error_is_a_protocol_error() -> None:
    assert issubclass(PipeError, ProtocolError)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_msgpack_values, st.lists(st.binary(max_size=8), max_size=3))
def test_random_headers_raise_only_pipe_error(header: Any, frames: list[bytes]) -> None:
    try:
        decode(msgpack.packb(header), list(frames))
    except PipeError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([cls.VERB.value for cls in pm.ALL_MESSAGES]),
       st.lists(_msgpack_values, max_size=12), st.lists(st.binary(max_size=8), max_size=3))
@pytest.mark.long
def test_a_known_verb_with_random_fields_raises_only_pipe_error(
        verb: str, fields: list[Any], frames: list[bytes]) -> None:
    head = msgpack.packb([verb, *fields])
    try:
        message = decode(head, list(frames))
    except PipeError:
        return
    assert message.VERB == verb  # what decodes is a valid message of that type
    again, _ = encode(message)  # (compared packed: a NaN is not equal to itself)
    assert msgpack.packb(msgpack.unpackb(again, raw=False)) == head


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.binary(max_size=8), max_size=3))
def test_random_header_bytes_on_the_pipe_raise_only_pipe_error(head: bytes,
                                                              frames: list[bytes]) -> None:
    left, right = pair()
    try:
        _raw(left.sock, head, frames)
        try:
            right.recv()
        except PipeError:
            pass
        assert not right.buffered()  # (the whole message was read)
    finally:
        left.close()
        right.close()


class _Core:
    """What ``Executors`` hands the core when an executor dies or says it skipped a task,
    recorded."""

    def __init__(self) -> None:
        self.died: list[int] = []
        self.skipped: list[int] = []
        self.executors: dict[int, Any] = {}  # (none known: each died as if it was ready)

    def running(self, ex_id: int) -> None:
        return None

    def handle(self, event: Any, now: float) -> list[Any]:
        from distrib.worker._events import ExecutorDied, TaskSkipped

        if isinstance(event, ExecutorDied):
            self.died.append(event.ex_id)
        elif isinstance(event, TaskSkipped):
            self.skipped.append(event.run_id)
        return []


@pytest.mark.parametrize("head, frames", [
    (msgpack.packb(["done", 7, "ok"]), [b"x"]),  # a field short
    (msgpack.packb(["call", 7, 3, "f", [], 0, 0, None, [], "", "g"]), [b"c"]),  # no threads
    (msgpack.packb(["out", 7, "1", "text"]), []),  # a wrong type
    (msgpack.packb(["hello"]), []),  # an unknown verb
    (msgpack.packb(["skip", 7]), []),  # one only the daemon sends
    (b"\xc1", []),  # not msgpack
])
def test_the_daemon_stops_an_executor_that_sends_a_malformed_message(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, head: bytes,
        frames: list[bytes]) -> None:
    from distrib import _process
    from distrib.worker._executors import Executors
    from distrib.worker._memory import MemoryWatch
    from distrib.worker._pool import ExecutorProcess

    monkeypatch.setattr(_process, "become_subreaper", lambda: False)  # (not the test process)
    core = _Core()
    applied: list[list[Any]] = []
    executors = Executors("w", tmp_path, 0, core,  # type: ignore[arg-type]
                          MemoryWatch(), applied.append)
    ours, theirs = socket.socketpair()
    proc = executors.procs[1] = ExecutorProcess(Pipe(ours), tmp_path)
    executor_end = Pipe(theirs)
    executor_end.send(pm.Skipped(5))  # (a well-formed message first: acted on)
    _raw(theirs, head, frames)
    executors.on_readable({proc.fileno(): 1})
    assert core.skipped == [5] and core.died == [1]
    theirs.close()
    ours.close()


def test_what_an_executor_sent_before_it_exited_is_read_before_it_is_taken_as_dead(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The daemon's tick may see an executor's exit before its loop read the pipe: a result or
    # a task's last output sent just before (an executor that ends after a task, or a task that
    # printed, then exited) would be lost, and the task reported as crashed.
    from distrib import _process
    from distrib.worker._executors import Executors
    from distrib.worker._memory import MemoryWatch
    from distrib.worker._pool import ExecutorProcess

    monkeypatch.setattr(_process, "become_subreaper", lambda: False)  # (not the test process)
    core = _Core()

    def apply(actions: list[Any]) -> None:  # (as the daemon's: one that died is dropped)
        for ex_id in core.died:
            executors.procs.pop(ex_id, None)

    executors = Executors("w", tmp_path, 0, core,  # type: ignore[arg-type]
                          MemoryWatch(), apply)
    ours, theirs = socket.socketpair()
    proc = executors.procs[1] = ExecutorProcess(Pipe(ours), tmp_path)
    proc.proc = subprocess.Popen([sys.executable, "-c", "pass"])  # (a process that exited)
    proc.proc.wait(60)
    Pipe(theirs).send(pm.Skipped(5))
    theirs.close()
    executors.tick(time.monotonic())
    assert core.skipped == [5] and core.died == [1]
    ours.close()


_SO_SNDBUFFORCE = 32  # (Linux; root may raise a socket's buffer past the system's maximum)


def _stray_wrote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, megabytes: int,
                 core: _Core) -> tuple[Any, list[int], socket.socket, socket.socket]:
    """``Executors`` with executor 1, which exited, and ``megabytes`` MB of a task's output
    in its pipe, written after, by a process its task left holding the pipe (still open);
    and the lengths of the lines of it read."""
    from distrib import _process
    from distrib.worker._executors import Executors
    from distrib.worker._memory import MemoryWatch
    from distrib.worker._pool import ExecutorProcess

    monkeypatch.setattr(_process, "become_subreaper", lambda: False)  # (not the test process)

    def apply(actions: list[Any]) -> None:  # (as the daemon's: one that died is dropped)
        for ex_id in core.died:
            executors.procs.pop(ex_id, None)

    executors = Executors("w", tmp_path, 0, core,  # type: ignore[arg-type]
                          MemoryWatch(), apply)
    read: list[int] = []
    executors.on_output = lambda ex_id, stream, text: read.append(len(text))
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, (megabytes + 20) << 20)
    proc = executors.procs[1] = ExecutorProcess(Pipe(ours), tmp_path)
    proc.proc = subprocess.Popen([sys.executable, "-c", "pass"])  # (the executor: exited)
    proc.proc.wait(60)
    line, stray = "x" * 60_000, Pipe(theirs)
    for _ in range(megabytes * 1_000_000 // len(line)):
        stray.send(pm.Out(3, 1, line))
    return executors, read, ours, theirs


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the socket a 100 MB buffer")
def test_what_a_process_left_holding_an_ended_executors_pipe_wrote_is_read_a_budget_a_tick(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A task's child kept the executor's socket and wrote 80 MB into it after the executor
    # exited, and may write on: a tick reads at most a budget of it, as the loop does, and,
    # while its task's outcome may be in what is left, the executor is dead once all that
    # came is read (the test above), or LAST_WORDS_SECONDS after its exit, read or not. (Its
    # last words were read without bound: one tick read 60 MB here, or all a fast writer
    # kept sending.)
    from types import SimpleNamespace

    from distrib.worker import _executors

    core = _Core()
    task = SimpleNamespace(task=SimpleNamespace(task_id=9), run_id=9)  # (the task it ran)
    monkeypatch.setattr(core, "running", lambda ex_id: task)
    executors, read, ours, theirs = _stray_wrote(monkeypatch, tmp_path, 80, core)
    try:
        now = time.monotonic()
        for tick in range(2):
            executors.tick(now + tick)
            assert 0 < sum(read) <= _executors.READ_BUDGET + (1 << 20)  # (and it returned)
            assert core.died == []  # (more had come than a tick reads)
            read.clear()
        executors.tick(now + _executors.LAST_WORDS_SECONDS + 1)
        assert core.died == [1] and 0 < sum(read) <= _executors.READ_BUDGET + (1 << 20)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give the socket a 60 MB buffer")
def test_an_idle_executor_that_exited_is_dead_at_once_whatever_is_left_in_its_pipe(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # (no outcome can be in what is left: while it was read, a task handed to the executor
    # would have crashed with it)
    from distrib.worker import _executors

    core = _Core()
    executors, read, ours, theirs = _stray_wrote(monkeypatch, tmp_path, 40, core)
    try:
        executors.tick(time.monotonic())
        assert core.died == [1] and 0 < sum(read) <= _executors.READ_BUDGET + (1 << 20)
    finally:
        ours.close()
        theirs.close()


def _received(pipe: Pipe, deadline: float = 60.0) -> pm.PipeMessage:
    """``pipe.receive()`` polled until a message has all come."""
    until = time.monotonic() + deadline
    while (message := pipe.receive()) is None:
        assert time.monotonic() < until, "no whole message in time"
        pipe.wait()
    return message


def test_receive_never_waits_for_the_rest_of_a_message() -> None:
    # An executor runs a Main's code, which may send part of a message and no more: the
    # daemon's loop, serving every Main, must not wait for the rest.
    ours, theirs = socket.socketpair()
    daemon = Pipe(ours)
    data = bytes(range(256)) * (12 << 12)  # 12 MiB: a frame received into mapped memory
    head, frames = encode(pm.Done(7, Outcome.OK, {}, {}, (data, b"tail")))
    wire = (struct.pack("<II", len(head), 2) + struct.pack("<2Q", len(data), 4) + head
            + data + b"tail")
    try:
        for cut in (3, 20, 8 + 16 + len(head) // 2, len(wire) // 2, len(wire) - 1):
            sender = threading.Thread(target=theirs.sendall, args=(wire[:cut],))
            sender.start()
            while sender.is_alive() or select.select([ours], [], [], 0)[0]:
                assert daemon.receive() is None  # (until all of the part is read: no wait)
            sender.join()
            sender = threading.Thread(target=theirs.sendall, args=(wire[cut:],))
            sender.start()
            message = _received(daemon)
            sender.join(60)
            assert isinstance(message, pm.Done) and message.run_id == 7
            assert [bytes(f) for f in message.frames] == [data, b"tail"]
        theirs.sendall(struct.pack("<II", 1, 0))  # (a message cut short by the peer's end)
        theirs.close()
        with pytest.raises(EOFError):
            _received(daemon)
    finally:
        ours.close()
        theirs.close()


def test_a_frame_larger_than_any_payload_ends_the_pipe_holding_nothing() -> None:
    from distrib.wire._limits import MAX_PAYLOAD_BYTES

    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(struct.pack("<II", 1, 1) + struct.pack("<Q", MAX_PAYLOAD_BYTES + 1))
        theirs.sendall(msgpack.packb(["done"]))
        with pytest.raises(EOFError, match="more than any payload"):
            _received(Pipe(ours))
    finally:
        ours.close()
        theirs.close()


def test_a_frame_claimed_large_holds_only_the_bytes_that_came() -> None:
    # 8 GiB claimed, 1 MiB sent: the daemon's memory grows by what came, not by the claim.
    ours, theirs = socket.socketpair()
    daemon = Pipe(ours)
    try:
        before = psutil.Process().memory_info().rss
        sender = threading.Thread(target=theirs.sendall, args=(
            struct.pack("<II", 1, 1) + struct.pack("<Q", 8 << 30) + b"\x90" + b"x" * (1 << 20),))
        sender.start()
        while sender.is_alive() or select.select([ours], [], [], 0)[0]:
            assert daemon.receive() is None
        sender.join()
        assert psutil.Process().memory_info().rss - before < 256 << 20
    finally:
        ours.close()
        theirs.close()


def test_post_keeps_what_the_kernel_does_not_take_and_flush_sends_it_in_order() -> None:
    # The daemon's writes to an executor that does not read (its task stopped it, say) must
    # not hold the daemon either.
    ours, theirs = socket.socketpair()
    daemon, executor = Pipe(ours), Pipe(theirs)
    data = bytes(range(256)) * (16 << 12)  # 16 MiB: far more than the socket takes at once
    try:
        daemon.post([pm.ChildOutcome(3, 1, "ok", {}, (data, b""))])  # (an empty frame too)
        daemon.post([pm.Skip(4), pm.Skip(5)])
        assert daemon.pending
        got: list[pm.PipeMessage] = []
        reader = threading.Thread(target=lambda: got.extend(executor.recv() for _ in range(3)))
        reader.start()
        deadline = time.monotonic() + 60
        while daemon.pending:
            assert time.monotonic() < deadline, "the kept bytes did not go out"
            select.select([], [ours], [], 1.0)
            daemon.flush()
        reader.join(60)
        assert [type(m).__name__ for m in got] == ["ChildOutcome", "Skip", "Skip"]
        assert [bytes(f) for f in got[0].frames] == [data, b""]  # type: ignore[union-attr]
        assert [m.run_id for m in got[1:]] == [4, 5]  # type: ignore[union-attr]
    finally:
        ours.close()
        theirs.close()


def test_an_executor_that_keeps_sending_gets_one_read_a_turn(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A task printing in a loop sends faster than the daemon forwards: each turn of the
    # daemon's loop reads what one read brings, and the other executors and Mains get theirs.
    from distrib import _process
    from distrib.worker._executors import Executors
    from distrib.worker._memory import MemoryWatch
    from distrib.worker._pool import ExecutorProcess

    monkeypatch.setattr(_process, "become_subreaper", lambda: False)  # (not the test process)
    executors = Executors("w", tmp_path, 0, _Core(),  # type: ignore[arg-type]
                          MemoryWatch(), lambda actions: None)
    lines: list[str] = []
    executors.on_output = lambda ex_id, stream, text: lines.append(text)
    ours, theirs = socket.socketpair()
    proc = executors.procs[1] = ExecutorProcess(Pipe(ours), tmp_path)
    total = 40_000  # (about 1.2 MB: many reads' worth)
    flood = b"".join(_wire(pm.Out(1, 1, f"line {i:06d}\n")) for i in range(total))
    sender = threading.Thread(target=theirs.sendall, args=(flood,))
    sender.start()
    try:
        select.select([ours], [], [], 60)
        executors.on_readable({proc.fileno(): 1})
        assert 0 < len(lines) < total // 4  # (a read's worth, not what keeps coming)
        deadline = time.monotonic() + 60
        while len(lines) < total:
            assert time.monotonic() < deadline, "the rest was not read"
            select.select([ours], [], [], 1.0)
            executors.on_readable({proc.fileno(): 1})
            assert len(proc.pipe._buf) <= 2 << 16  # (what was read ahead: not all that came)
        assert lines == [f"line {i:06d}\n" for i in range(total)]
    finally:
        sender.join(60)
        ours.close()
        theirs.close()


def _wire(message: pm.PipeMessage) -> bytes:
    """One message as it goes on the pipe."""
    head, frames = encode(message)
    assert not frames
    return struct.pack("<II", len(head), 0) + head
