"""Jobs over worker processes that each run at a fixed CPU thread count.

A benchmark fans its (setting, seed) jobs out over ``--workers`` processes; its numbers
must not depend on how many there are. Each worker is a *spawned* process (a forked one
would inherit the parent's torch thread pools) pinned by :func:`fix_threads` before it
runs anything, so every job runs at ``threads`` threads whatever ``workers`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from tqdm.auto import tqdm

from medcommon.train.seeding import fix_threads

J = TypeVar("J")
R = TypeVar("R")


def pinned_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each pinned to ``threads`` CPU threads first."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=fix_threads,
        initargs=(threads,),
    )


def pinned_map(
    fn: Callable[[J], R],
    jobs: Iterable[J],
    *,
    workers: int = 1,
    threads: int = 1,
    desc: str | None = None,
    quiet: bool = True,
) -> list[R]:
    """``[fn(job) for job in jobs]``, in order; with ``workers`` > 1 (and more than one
    job) in :func:`pinned_pool` processes (``fn`` and the jobs must pickle). The caller,
    which runs the jobs itself otherwise, is pinned already. ``desc``: a progress bar."""
    jobs = list(jobs)
    bar: Any = tqdm(total=len(jobs), desc=desc, disable=quiet or desc is None, leave=False)
    out: list[R] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            out.append(fn(job))
            bar.update()
    else:
        with pinned_pool(workers, threads) as pool:
            for res in pool.map(fn, jobs):
                out.append(res)
                bar.update()
    bar.close()
    return out
