"""Independent jobs in worker processes: the stripes of a large frame, the slices of a lossless series.

numpy only besides the standard library (it runs on the board). How many processes: the ``workers``
argument, else the environment variable ``MEDCODEC_WORKERS``, else the CPUs this process may use. The
results never depend on it: callers split their work by the data alone, and the jobs are pure.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from codec.errors import MedcodecError

__all__ = ["ENV", "default_workers", "map_processes", "serial_in_this_process"]

#: the environment variable that sets the number of worker processes
ENV = "MEDCODEC_WORKERS"


def default_workers() -> int:
    """``MEDCODEC_WORKERS`` if set (a positive integer), else the CPUs this process may use."""
    env = os.environ.get(ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise MedcodecError(f"{ENV} must be a positive integer, got {env!r}")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def serial_in_this_process() -> None:
    """Pool initializer for workers that run one job each: a job that itself splits its work (stripes,
    slices) then runs it in its own process instead of starting more."""
    os.environ[ENV] = "1"


def map_processes(fn: Callable, jobs: Sequence[tuple], workers: int | None = None,
                  done: Callable[[int], None] | None = None) -> list:
    """``[fn(*job) for job in jobs]``, in up to ``workers`` processes when there are several jobs.

    ``fn`` must be a module-level function. The workers are forked where the platform can (Linux: they
    do not re-run the caller's ``__main__``, which ``spawn`` does), spawned elsewhere, and they run
    their own jobs' splits serially (``MEDCODEC_WORKERS=1`` inside). Results come back in job order;
    ``done(i)`` is called in this process as job ``i`` finishes. An exception of a job is raised here
    as it was raised there; a worker that dies is a one-line :class:`MedcodecError`.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise MedcodecError(f"workers must be at least 1, got {workers}")
    n = min(workers, len(jobs))
    if n <= 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(fn(*job))
            if done is not None:
                done(i)
        return out
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(method),
                                 initializer=serial_in_this_process) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            out: list = [None] * len(jobs)
            try:
                for f in as_completed(futures):
                    out[futures[f]] = f.result()
                    if done is not None:
                        done(futures[f])
            except BaseException:  # the first failure: drop the jobs not started, then raise it
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            return out
    except BrokenProcessPool as exc:
        raise MedcodecError(f"a worker process died ({exc}); {ENV}=1 runs the work in this process") from None
