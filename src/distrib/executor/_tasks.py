"""What runs inside an executor process: import the environment, then run tasks one by one.

Started by the daemon as ``python -m distrib.executor._tasks FD ENV MAIN RUNS VENV``, talking
over the socket ``FD`` in the messages of ``wire._pipe_messages``. ``VENV`` is the built Python
environment it runs in, or empty for the daemon's own.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import os
import signal
import sys
import threading
import socket
import time
import stat
import struct
from pathlib import Path
from typing import Any


from distrib import _process, _runtime, _sealed, _serialize, _shared, _shm
from distrib.wire._limits import MAX_FILE_BYTES, MAX_PAYLOAD_BYTES
from distrib._errors import SerializationError
from distrib.wire._kinds import Outcome, payload_size
from distrib.executor import _isolation, _objects, _standing, _subcalls
from distrib.executor._leftovers import Leftovers
from distrib.executor._outgoing import Outgoing
from distrib.wire._pipe import NICE_VAR, THREAD_VARS, Pipe, PipeError, decode
from distrib.wire._pipe_messages import (
    Become, ChildOutcome, Context, Done, EnvError, Leaving, NoFork, Out, Ready, Run, Skip,
    Skipped)


class _Forward(io.TextIOBase):
    """A task's stdout/stderr: complete lines go to the daemon, tagged with the task's run id."""

    def __init__(self, channel: _subcalls.Channel, stream: int) -> None:
        # (through the channel: a line goes after the outcomes held, as the task's calls do)
        self._channel, self._lock, self._stream = channel, channel.lock, stream
        self._buf: list[str] = []
        self.run_id = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buf.append(text)
            if "\n" in text:
                self._flush_lines(everything=False)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._flush_lines(everything=True)

    def _flush_lines(self, everything: bool) -> None:
        data = "".join(self._buf)
        cut = len(data) if everything else data.rfind("\n") + 1
        if cut:
            self._channel.send(Out(self.run_id, self._stream, data[:cut]))
        self._buf = [data[cut:]] if data[cut:] else []


_max_payload = 0  # bytes a result may pickle to (the Main's setting); 0: no limit
_SANDBOX_VAR = "DISTRIB_SANDBOX"  # set by the daemon's sandbox: where the tree is seen again
_sandbox = ""  # that path, in a sandbox
_sigint = False  # a real SIGINT reached this executor (else a task's KeyboardInterrupt is its own)


def _on_sigint(signum: int, frame: Any) -> None:
    """SIGINT as Python's default handler, remembered: a KeyboardInterrupt the task's code
    raises itself is that call's error (as under ProcessPoolExecutor); a signal stops us."""
    global _sigint
    _sigint = True
    raise KeyboardInterrupt


def _import_main(env: Path, main: str) -> None:
    path = env / main
    spec = importlib.util.spec_from_file_location(_runtime.MAIN_ALIAS, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the main script {main}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_runtime.MAIN_ALIAS] = module
    sys.modules["__main__"] = module  # pickles name it __main__; it must resolve to the script
    _runtime.mode = _runtime.Mode.WORKER_IMPORT
    _runtime.main_script = main
    try:
        spec.loader.exec_module(module)
    finally:
        _runtime.mode = _runtime.Mode.WORKER_TASK


def _outputs(isolation: _isolation.Overlay | _isolation.Copies,
             globs: tuple[str, ...]) -> list[tuple[str, Any, int]]:
    """The files the task wrote that match ``globs``, with their contents and modes."""
    import pathspec  # (20 ms: imported where matched, not by every process)

    spec = pathspec.GitIgnoreSpec.from_lines(globs)
    out: list[tuple[str, Any, int]] = []
    for path in isolation.written():
        if spec.match_file(path):
            full = isolation.folder / path  # (the task may have left its working folder)
            with open(full, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size > MAX_FILE_BYTES:
                    raise ValueError(f"output file {path} is {st.st_size} bytes, over the "
                                     f"{MAX_FILE_BYTES} limit of a file sent back")
                data = pickle.PickleBuffer(bytearray(f.read()))
            out.append((path, data, stat.S_IMODE(st.st_mode)))
    return out


class _Inbox:
    """What the daemon sent: tasks to run (in order), skips of those not started yet, and
    the outcomes of the running task's calls. Read between tasks by the executor's thread,
    until a task first makes calls: from then on by a thread of its own, which settles the
    calls' outcomes while tasks run (the common executor, whose tasks make no calls, keeps
    one thread and no hand-over per task)."""

    def __init__(self, pipe: Pipe, channel: _subcalls.Channel) -> None:
        self.pipe, self.channel = pipe, channel
        self.waiting: dict[int, Run] = {}  # received, not started
        self.closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        channel.on_first_call = self.read_in_thread

    @property
    def thread(self) -> threading.Thread | None:
        """Its reading thread, once started."""
        return self._thread

    def read_in_thread(self) -> None:
        """Read in a thread of its own from now on (called by the running task's first
        call: the executor's thread is in the task, not reading)."""
        with self._cond:  # (a task's threads may all make calls at once)
            if self._thread is None:
                self._thread = threading.Thread(target=self._read, name="distrib-inbox",
                                                daemon=True)
                self._thread.start()

    def next(self) -> Run | None:
        """The next task to run (waits for one); None once the daemon closed the pipe."""
        if self._thread is None:
            try:
                while not self.waiting or self.pipe.readable():  # (skips sent meanwhile)
                    if not self.waiting:
                        self.pipe.wait()
                    self._take()
            except (EOFError, OSError, ValueError):
                return None
        with self._cond:
            while not self.waiting and not self.closed:
                self._cond.wait()
            if not self.waiting:
                return None
            return self.waiting.pop(next(iter(self.waiting)))

    def _read(self) -> None:
        try:
            while True:
                self.pipe.wait()
                self._take()
        except (EOFError, OSError, ValueError):
            pass
        with self._cond:
            self.closed = True
            self._cond.notify()

    def _take(self) -> None:
        """Read and act on one message (one it does not expect is ignored)."""
        try:
            message = self.pipe.recv()
        except PipeError:
            return
        if isinstance(message, Run):
            with self._cond:
                self.waiting[message.run_id] = message
                self._cond.notify()
        elif isinstance(message, Skip):
            with self._cond:
                skipped = self.waiting.pop(message.run_id, None) is not None
            if skipped:
                self.channel.send_soon(Skipped(message.run_id))
        elif isinstance(message, ChildOutcome):
            self.channel.outcome(message.run_id, message.child, message.status, message.info,
                                 list(message.frames))


def _error_outcome(exc: BaseException) -> tuple[Outcome, dict[str, str], list[Any]]:
    return Outcome.ERROR, _sealed.error_info(exc), _sealed.dumps_error(exc)


def _drop_own_frame(exc: BaseException) -> None:
    # The first frame is this module's call of the task: noise in the user's traceback.
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next is not None:
        exc.__traceback__ = tb.tb_next


def main(argv: list[str]) -> None:
    global _sandbox
    _standing.be_nice(int(os.environ.pop(NICE_VAR, "0") or 0))
    _sandbox = os.environ.pop(_SANDBOX_VAR, "") or _sandbox
    if argv[0] == "zygote":
        _zygote(int(argv[1]))
        return
    _standing.own_group(bool(_sandbox))
    if argv[0] == "template":
        _template(argv[1:])
        return
    fd, env, main_script, runs = int(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    pipe = Pipe(socket.socket(fileno=fd))
    isolation = _isolation.start(env, runs, _sandbox)  # while this process has one thread
    _no_bytecode_in_tree(isolation)
    if isinstance(isolation, _isolation.Overlay):
        if argv[4] and not _sandbox:  # a built Python environment (a sandbox's is read-only)
            isolation.protect(Path(argv[4]))
        isolation.lock()
    sys.path.insert(0, str(env))
    if _prepare(pipe, env, main_script) is not None:
        _serve(pipe, isolation, os.getppid())


def _zygote(fd: int) -> None:
    """Wait (imported, nothing else done) to become the process the daemon names: its mode,
    variables, working folder and arguments, with its socket; leave when the daemon does.

    (It imports nothing of the Main's ahead: a script may set variables before its imports,
    which must see them.)"""
    control = socket.socket(fileno=fd)
    try:  # (its one message, small, sent with one call)
        data, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
        message = decode(data, []) if data else None
    except (OSError, ValueError, PipeError):
        return
    finally:
        control.close()
    if not isinstance(message, Become) or not fds:
        return  # the daemon closed its end: not needed
    os.environ.update(message.variables)
    os.chdir(message.cwd)
    main([*message.mode, str(fds[0]), *message.arguments])


def _no_bytecode_in_tree(isolation: _isolation.Overlay | _isolation.Copies) -> None:
    """Modules of the tree its build did not compile are compiled on import. Under an overlay
    their bytecode lands in this process's own layer; with copies (imports read the shared
    tree) none is written, so nothing reaches the tree."""
    if isinstance(isolation, _isolation.Copies):
        sys.dont_write_bytecode = True


def _prepare(pipe: Pipe, env: Path, main_script: str) -> list[str] | None:
    """Take the Main's context and import its main script; None (said to the daemon) if the
    import raised, else the modules to import ahead (for a template)."""
    try:
        context = pipe.recv()  # before any user code runs
    except PipeError as exc:
        raise SystemExit(f"executor: expected the Main's context first: {exc}") from None
    if not isinstance(context, Context):
        raise SystemExit("executor: expected the Main's context first, got "
                         f"{context.VERB.value!r}")
    sys.argv = context.argv or [str(env / main_script)]
    os.environ.update({k: v for k, v in context.variables.items() if k not in THREAD_VARS})
    # Calls made inside tasks pickle the workspace's functions (the script's too) by name,
    # as the Main does: they resolve wherever the workspace is.
    _runtime.shipped_root, _runtime.main_shipped = os.path.realpath(env), bool(main_script)
    _runtime.shipped_as = str(env)  # (its errors' tracebacks name files below it)
    try:
        if main_script:
            _import_main(env, main_script)
        _runtime.mode = _runtime.Mode.WORKER_TASK
    except BaseException as exc:  # anything the script raised while importing
        pipe.send(EnvError(_sealed.error_info(exc), tuple(_sealed.dumps_error(exc))))
        pipe.close()
        return None
    global _max_payload
    _max_payload = context.max_payload
    return context.preload


def _template(argv: list[str]) -> None:
    """A template: import the environment once, then fork an executor for each socket the
    daemon sends (``[b"F"]`` with the socket; the answer is the executor's pid, 8 bytes).

    Each executor is forked twice over, so that it is orphaned and adopted by the daemon (a
    subreaper), which can then wait for it and read its exit code as for any executor."""
    fd, env, main_script, runs = int(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    control = socket.socket(fileno=fd)
    pipe = Pipe(control)
    isolation = _isolation.start(env, runs, _sandbox)  # while this process has one thread
    _no_bytecode_in_tree(isolation)
    if argv[4] and not _sandbox and isinstance(isolation, _isolation.Overlay):
        isolation.protect(Path(argv[4]))
    sys.path.insert(0, str(env))
    preload = _prepare(pipe, env, main_script)
    if preload is None:
        return
    for name in preload[:500]:  # what the Main had imported: tasks will likely import it too
        try:
            importlib.import_module(name)
        except Exception:  # (a task that needs it will say why)
            pass
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads > 1 or threading.active_count() > 1 or pipe.buffered():
        pipe.send(NoFork(f"importing the workspace started {threads - 1} thread(s), and a "
                         "fork copies only one"))
        return
    daemon = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # intermediates are reaped as they exit
    pipe.send(Ready(isolation.kind))
    while True:
        asked = _asked_forks(control)
        if not asked:
            return  # the daemon closed its end (or sent no socket): stop
        # Every intermediate first, then their answers: they fork on both cores at once.
        answers: list[int] = []
        for i, fd in enumerate(asked):
            # (an executor must not hold another's socket: its death would go unseen)
            answers.append(_fork_executor(fd, control, isolation, daemon,
                                          asked[i + 1:] + answers))
        for read_end in answers:
            answer = os.read(read_end, 8)
            os.close(read_end)
            control.sendall(answer if len(answer) == 8 else struct.pack("<q", -1))


def _asked_forks(control: socket.socket) -> list[int]:
    """The sockets of the executors the daemon asks for: one (waited for), and any others
    already sent."""
    fds: list[int] = []
    control.setblocking(True)
    while True:
        try:
            _, got, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:  # (BlockingIOError: no more sent yet)
            break
        if not got:
            break
        fds.extend(got)
        control.setblocking(False)
    control.setblocking(True)
    return fds


def _fork_executor(fd: int, control: socket.socket,
                   isolation: _isolation.Overlay | _isolation.Copies, daemon: int,
                   others: list[int]) -> int:
    """Fork an executor on socket ``fd`` through an intermediate that says its pid (on the
    pipe returned) and leaves, so that the daemon (a subreaper) adopts it. ``others``: the
    template's descriptors it must not keep."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the intermediate: fork the executor, say its pid, leave
        try:  # (never back into the template's loop, whatever fails here)
            for other in others:
                os.close(other)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (tasks wait for their children)
            os.close(read_end)
            executor = os.fork()
            if executor == 0:
                os.close(write_end)
                control.close()
                _forked_executor(fd, isolation, daemon)
                os._exit(0)
            os.write(write_end, struct.pack("<q", executor))
        finally:
            os._exit(0)
    os.close(write_end)
    os.close(fd)
    return read_end


def _forked_executor(fd: int, isolation: _isolation.Overlay | _isolation.Copies,
                     daemon: int) -> None:
    """An executor forked from a template: its environment is imported already."""
    try:
        _standing.own_group(bool(_sandbox))  # (in a sandbox, not the template's: see there)
        sock = socket.socket(fileno=fd)
        if _sandbox:  # the daemon reads this process's pid, as it knows it, from the message
            sock.sendall(b"P")
        pipe = Pipe(sock)
        if isinstance(isolation, _isolation.Overlay):
            isolation.after_fork()
        _serve(pipe, isolation, daemon)  # (the template had the Main's context)
    except BaseException:  # never return into the template's loop
        import traceback

        traceback.print_exc()
        os._exit(70)


def _serve(pipe: Pipe, isolation: _isolation.Overlay | _isolation.Copies, parent: int) -> None:
    """Run the tasks the daemon sends, one by one, until it closes the pipe, or until a task
    leaves threads or processes running (they would run into the next tasks)."""
    _process.become_subreaper()  # (what a task's processes leave as they exit stays ours)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    _standing.start_watching(parent)
    lock = threading.RLock()  # (every send on the pipe: tasks' output, calls, outcomes)
    channel = _subcalls.channel = _subcalls.Channel(pipe, lock)
    out, err = _Forward(channel, 1), _Forward(channel, 2)
    _shared.load_frames = _objects.load  # (the calls' shared objects: this task's Main's)
    inbox = _Inbox(pipe, channel)
    outgoing = Outgoing(channel)
    leftovers = Leftovers(lambda: (inbox.thread, outgoing.thread, *channel.threads()))
    pipe.send(Ready(isolation.kind))
    real_out, real_err = sys.stdout, sys.stderr
    while True:
        task = inbox.next()
        if task is None:
            return
        run_id, frames, shm, shm_pid = task.run_id, list(task.frames), task.shm, task.results_to
        began = time.perf_counter()
        channel.start(run_id)
        _objects.current = Path(task.objects) if task.objects else None
        in_shm: dict[str, int] = {}
        out.run_id = err.run_id = run_id
        sys.stdout, sys.stderr = out, err
        try:
            isolation.enter()
            if shm:
                frames = _shm.restore(frames, shm, unlink=False)  # (its Main removes them)
            fn, args, kwargs = _serialize.loads_call(frames)
            channel.caller = getattr(fn, "__qualname__", "")
            result = fn.__wrapped__(*args, **kwargs)
            if fn.options.outputs:
                result = (result, _outputs(isolation, fn.options.outputs))
            info: dict[str, str] = {}
            try:
                status, payload = Outcome.OK, _serialize.dumps(_serialize.out_of_band(result))
                if _max_payload and (size := payload_size(payload)) > _max_payload:
                    raise SerializationError(
                        f"the result of {fn.__qualname__} pickles to {size:,} bytes, more "
                        f"than the Main's max_payload ({_max_payload:,} bytes); return less, "
                        "or raise the setting")
                if (size := payload_size(payload)) > MAX_PAYLOAD_BYTES:
                    raise SerializationError(
                        f"the result of {fn.__qualname__} pickles to {size:,} bytes, more "
                        f"than one message to the Main carries ({MAX_PAYLOAD_BYTES:,} bytes); "
                        "return less, or return it in parts")
                if shm_pid:
                    try:
                        payload, in_shm = _shm.offload(payload, shm_pid)
                    except OSError:
                        pass  # (/dev/shm full, say): the pipe carries it
            except Exception as exc:
                status, info, payload = _error_outcome(exc)
        except BaseException as exc:  # the task's own error, or a call that does not unpickle
            if isinstance(exc, KeyboardInterrupt) and _sigint:
                raise
            _drop_own_frame(exc)
            status, info, payload = _error_outcome(exc)
        finally:
            out.flush()
            err.flush()
            sys.stdout, sys.stderr = real_out, real_err
            channel.task_ended()
        ran = time.perf_counter() - began
        # (the time it ran, as the daemon reports it: outcomes sent together arrive together)
        info = {**info, "ran": f"{ran:.6f}"}
        # (a task that made calls has the inbox read by its thread: it is not held)
        outgoing.send(Done(run_id, status, info, in_shm, tuple(payload)), ran,
                      len(inbox.waiting) if inbox.thread is None else 0)
        left = leftovers.check()
        if left or _runtime.retire:
            channel.send(Leaving(run_id, f"task {channel.caller or run_id} left {left}"
                                 if left else _runtime.retire))
            _process.kill_trees([os.getpid()], with_roots=False)
            os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
