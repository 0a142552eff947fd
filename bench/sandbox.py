"""What an executor's start costs with and without the sandbox (``worker._sandbox``).

    .venv/bin/python -m bench.sandbox [EXECUTORS] [REPS]     # default 20 executors, 5 reps

A template of a one-line environment is started (to its Ready), then EXECUTORS executors are
forked from it at once (the time from the fork request to the last one's Ready, per
executor), then one executor is spawned (to its Ready); alternately without and with the
sandbox, medians printed. The cost per task is W1's (``bench/run --only W1 --frameworks
distrib-worker,distrib-sandbox``)."""
import shutil, statistics, sys, tempfile, time
from pathlib import Path
from distrib.worker import _pool, _sandbox
from distrib.wire._pipe_messages import Ready

def run(boxed: bool, n: int) -> tuple[float, float, float]:
    root = Path(tempfile.mkdtemp(prefix="startcost-"))
    env, runs = root / "env", root / "runs"
    env.mkdir(); runs.mkdir()
    (env / "main.py").write_text("x = 1\n")
    sb = _sandbox.detect() if boxed else None
    box = _sandbox.Box(env, runs, _sandbox.reads(None, root), "none", False) if boxed else None
    recipe = _pool.Recipe(1, env, "main.py", runs, ["main.py"], {}, sandboxes=sb, box=box)
    from distrib._process import become_subreaper; become_subreaper()
    t0 = time.perf_counter()
    tpl = _pool.Template.start(recipe, time.monotonic())
    msg = tpl.control.recv(); assert isinstance(msg, Ready), msg
    t_template = time.perf_counter() - t0
    tpl.ready = True
    exs = [_pool.executor(recipe) for _ in range(n)]
    t1 = time.perf_counter()
    failed = tpl.fork(exs); assert not failed
    for ex in exs:
        m = ex.read(); assert isinstance(m, Ready), m
    t_fork = (time.perf_counter() - t1) / n
    t2 = time.perf_counter()
    sp = _pool.executor(recipe); _pool.spawn(recipe, sp)
    m = sp.read(); assert isinstance(m, Ready), m
    t_spawn = time.perf_counter() - t2
    for ex in exs + [sp]:
        ex.kill()
    tpl.kill()
    shutil.rmtree(root, ignore_errors=True)
    return t_template, t_fork, t_spawn

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rows = {False: [], True: []}
    for _ in range(reps):
        for boxed in (False, True):
            rows[boxed].append(run(boxed, n))
    for boxed, rs in rows.items():
        med = [statistics.median(x) * 1000 for x in zip(*rs)]
        print(f"{'sandbox' if boxed else 'no sandbox'}: template start to ready {med[0]:.0f} ms, "
              f"forked executor {med[1]:.1f} ms each ({n} at once), spawned executor {med[2]:.0f} ms (median of {reps})")
