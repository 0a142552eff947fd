"""The pieces of the scale simulation (``bench/simulate.py``), at sizes of a second or so."""

from __future__ import annotations

import pytest

from bench.simulate import (
    LATENCY, ScanScheduler, Simulation, core_cost, duration, main, simulate)


def test_task_durations_are_spread_evenly_and_the_same_at_each_run() -> None:
    times = [duration(i) for i in range(1000)]
    assert min(times) >= 0.5 and max(times) < 1.5
    assert abs(sum(times) / len(times) - 1.0) < 0.01
    assert times == [duration(i) for i in range(1000)]


def test_every_task_runs_once_and_its_result_reaches_the_main() -> None:
    result = simulate(4, 200)
    assert result.tasks == 200 and result.rule == "heaps"
    # 50 tasks of ~1 s a slot: the ideal is ~50 s; a round trip and a task's spread more.
    assert 50 * 0.95 < result.makespan < 50 + 2.0 and 0.95 < result.efficiency <= 1.0
    assert result.assign_us > 0 and result.scheduler_us > result.assign_us


def test_workers_run_in_order_what_they_received_on_their_free_slots() -> None:
    sim = Simulation(1, charge_cpu=False)
    worker = sim.sims["w0"]
    assert LATENCY[0] <= worker.latency <= LATENCY[1] and worker.free == 1
    worker.queue.extend([3, 4])
    sim.start(worker, 10.0)
    assert list(worker.queue) == [4] and worker.free == 0
    assert [(t, task) for t, _, _, _, task in sim.events] == [(10.0 + duration(3), 3)]


def test_heaps_and_the_scan_give_the_same_run_when_the_mains_cpu_is_not_charged() -> None:
    def run(scan: bool) -> tuple[float, int]:
        sim = Simulation(20, scan=scan, charge_cpu=False)
        sim.submit(500)
        sim.run()
        return sim.last_result, sim.finished

    assert isinstance(Simulation(1, scan=True).sched, ScanScheduler)
    assert run(False) == run(True)


def test_a_busy_main_makes_workers_wait() -> None:
    # 40 slots finishing ~40 tasks a second: at 40 ms per message read or sent, the Main
    # cannot keep up.
    # cannot keep up (busy > 1: it needs more than a second a second).
    idle, busy = simulate(40, 2000), simulate(40, 2000, io_us=40_000)
    assert idle.main_busy < 0.1 and busy.main_busy > 0.9
    assert busy.efficiency < idle.efficiency - 0.2


def test_slow_workers_count_in_the_ideal() -> None:
    result = simulate(10, 300, slow=0.5)
    assert 0.5 < result.efficiency <= 1.0


def test_the_worker_core_costs_are_measured_with_many_mains() -> None:
    assert core_cost(3, slots=4, tasks=100) > 0


def test_the_command_prints_a_row_per_size_and_rule_and_one_per_count_of_mains(
        capsys: pytest.CaptureFixture[str]) -> None:
    main(["--sizes", "4:100", "--scan-budget", "200", "--mains", "2", "--core-tasks", "100"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:3] for row in rows[1:3]] == [["| 4", "100", "heaps"],
                                                           ["| 4", "50", "scan"]]
    assert rows[-1].startswith("| 2 | ")
