"""The local evaluation pool (`bench eval --launcher pool`, the default): up to N spawned worker
processes, each running one unit (harness.app.evaluate.run_unit) at a time and telling the parent as
each job starts and ends.

What survives what:
- a worker that dies (the OOM killer's SIGKILL, a segfault in native code) costs the job it was
  running: the parent records that job as failed with the signal, the jobs the worker had recorded
  stay, and the rest of its unit goes back in the queue for a fresh worker;
- Ctrl-C or any error in the parent ends the workers (an interrupted job is simply not recorded, so
  a re-run does it); a parent killed outright (SIGKILL, SIGTERM) takes its workers with it
  (harness.process.die_with_parent), so none runs on to hang on a dead pipe.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Worker:
    """A worker process, its end of the pipe, and the unit it is running (None: idle)."""
    process: object
    conn: object
    spec: dict | None = None
    running: int | None = None      # index in spec["keys"] of the job under way
    finished: set = field(default_factory=set)
    since: float = 0.0              # when the running job started (perf_counter)

    def assign(self, spec: dict) -> bool:
        """Send the worker a unit; False if it has died meanwhile (the loop then removes it)."""
        try:
            self.conn.send(spec)
        except OSError:  # BrokenPipeError: no one is reading
            return False
        self.spec, self.running, self.finished = spec, None, set()
        return True


def run_pool(specs: list[dict], jobs: int, record_dead, tick=None) -> dict:
    """Run every unit spec; returns the summed counts {done, failed, features_computed}.
    `record_dead(spec, index, reason, seconds, worker)` records job `index` of a unit whose worker died
    while running it; `tick()` is called about once a second."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    queue, workers, errors = deque(specs), [], []
    totals = {"done": 0, "failed": 0, "features_computed": 0}
    try:
        while queue or any(w.spec is not None for w in workers):
            for worker in workers:  # an idle worker that died meanwhile is removed below, its unit kept
                if worker.spec is None and queue and worker.assign(queue[0]):
                    queue.popleft()
            while queue and len(workers) < jobs:
                ours, theirs = context.Pipe()
                process = context.Process(target=_worker_main, args=(theirs, os.getpid()), name="bench-eval-worker")
                process.start()
                theirs.close()  # ours is then the only other end: a dead worker reads as end of file
                workers.append(_Worker(process, ours))
                workers[-1].assign(spec := queue.popleft())
                workers[-1].spec = spec  # even if it died at once: its death costs a job, so this ends
            multiprocessing.connection.wait([w.process.sentinel for w in workers], timeout=1.0)
            for worker in list(workers):
                alive = worker.process.is_alive()  # before reading: every message sent before a death is read
                errors += _read_events(worker, totals)
                if alive:
                    continue
                workers.remove(worker)
                worker.process.join()
                if worker.spec is not None:
                    queue.extend(_bury(worker, record_dead, totals))
            if tick:
                tick()
    finally:
        for worker in workers:  # idle ones end at end of file; busy ones were interrupted (Ctrl-C, an error)
            worker.conn.close()
            if worker.spec is not None:
                worker.process.terminate()
        for worker in workers:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
    if errors:
        raise errors[0]
    return totals


def _worker_main(conn, parent_pid: int) -> None:
    """A worker process: run the units the parent sends until it closes the pipe."""
    from medssl_bench.harness.process import die_with_parent

    die_with_parent(parent_pid)  # first: a parent that died meanwhile is noticed here
    from medssl_bench.harness.app.evaluate import run_unit

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("result", run_unit(spec, report=lambda *event: conn.send(event))))
        except Exception as err:  # the unit could not run at all: the parent raises it once the others end
            try:
                pickle.dumps(err)
            except Exception:
                err = RuntimeError(f"{type(err).__name__}: {err}")
            conn.send(("error", err))


def _read_events(worker: _Worker, totals: dict) -> list:
    """Apply the messages a worker has sent so far; returns the errors of units that could not run."""
    errors = []
    while True:
        try:
            if not worker.conn.poll():
                return errors
            kind, *rest = worker.conn.recv()
        except (EOFError, OSError):  # the worker is gone
            return errors
        if kind == "start":
            worker.running, worker.since = rest[0], time.perf_counter()
        elif kind == "end":
            worker.finished.add(rest[0])
            worker.running = None
            totals[rest[1]] += 1
        else:  # "result" or "error": the unit is over, the worker idle
            if kind == "result":
                totals["features_computed"] += rest[0]["features_computed"]
            else:
                errors.append(rest[0])
            worker.spec = None


def _bury(worker: _Worker, record_dead, totals: dict) -> list[dict]:
    """A worker died inside a unit: its running job (the first unfinished one if it died before
    starting any) is recorded as failed with the cause; returns the rest of the unit, for a fresh
    worker. One death costs one job, so a unit that kills every worker still ends."""
    from medssl_bench.harness.process import describe_exit

    keys, process = worker.spec["keys"], worker.process
    unfinished = [i for i in range(len(keys)) if i not in worker.finished]
    culprit = worker.running if worker.running is not None else unfinished[0]
    reason = describe_exit(process.exitcode)
    if worker.running is None and not worker.finished:
        reason += " before its first job started (loading the data?)"
    seconds = time.perf_counter() - worker.since if worker.running is not None else 0.0
    record_dead(worker.spec, culprit, reason, seconds, {"pid": process.pid, "exitcode": process.exitcode})
    totals["failed"] += 1
    rest = [keys[i] for i in unfinished if i != culprit]
    return [{**worker.spec, "keys": rest}] if rest else []
