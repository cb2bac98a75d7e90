"""``--executor ray``: each planned run is a Ray task with its CPU/GPU request; a task whose worker dies is retried.

The only module that imports ``ray`` (the optional ``cl-harness[ray]`` extra).
"""

from __future__ import annotations

import math

from cl_harness.errors import ConfigError, TrackingStoreError
from cl_harness.grid.experiment import GridContext, OnResult
from cl_harness.runner.run import RunResult

RAY_EXTRA_HINT = 'install the extra: pip install "cl-harness[ray]"'


def require_ray() -> None:
    """Raise ConfigError when ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs the ray package, which is not installed ({exc})", key="--executor",
                          hint=RAY_EXTRA_HINT + ", or use --executor local [--workers N]") from exc


def run_tasks(function, calls_for, address: str | None, cpus: float, gpus: float) -> list[str | None]:
    """Run ``function(*args)`` for every args of ``calls_for(slots)`` as Ray tasks at once (a local cluster unless
    ``address``); ``slots`` is how many tasks of ``cpus`` CPUs the cluster runs at the same time.

    Returns, per call, None when it returned and the error otherwise (its worker died, or it raised). Nothing is
    retried: the caller decides what to do with what is missing.
    """
    import ray
    from ray.exceptions import RayError, RayTaskError

    started_here = RayExecutor(address, 0, cpus, gpus).connect()
    pending = []
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1.0) // cpus))
        task = ray.remote(exits_as_errors).options(num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False)
        pending = [task.remote(function, *args) for args in calls_for(slots)]
        errors: list[str | None] = []
        for ref in list(pending):
            try:
                ray.get(ref)
                errors.append(None)
            except RayTaskError as exc:
                errors.append(task_error(exc.cause) if exc.cause is not None else f"{type(exc).__name__}: {exc}")
            except RayError as exc:
                lines = str(exc).strip().splitlines()
                errors.append(f"{type(exc).__name__}: {lines[-1] if lines else ''}")
            pending.remove(ref)
        return errors
    finally:
        for ref in pending:  # interrupted here: the unfinished tasks end their trial runs KILLED
            ray.cancel(ref)  # (never a finished task: cancelling one can crash Ray 2.60's driver)
        if started_here:
            ray.shutdown()


class UserCodeExit(Exception):
    """A run's user code called sys.exit() (or raised another exit): the run failed; its Ray worker did not crash."""


def exits_as_errors(function, *args):
    """``function(*args)`` in a Ray task, where an exit from user code would end the worker and Ray would retry the task:
    raised as UserCodeExit instead, so that it fails this run or trial only, as in a local worker process."""
    from cl_harness.strategies.user_plugins import process_exit

    try:
        return function(*args)
    except (Exception, KeyboardInterrupt):  # an ordinary error, or ray.cancel: as they are
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit from a user's plugin
        raise UserCodeExit(f"ended by {process_exit(exc)}") from None


def task_error(exc: Exception) -> str:
    """How a failed task's error is reported: a user's exit as its own text, else the type and the message."""
    from cl_harness.errors import error_line

    return str(exc) if isinstance(exc, UserCodeExit) else error_line(exc)


class RayExecutor:
    """Submits every run to a Ray cluster (``address``), or to a local one started here when there is none."""

    def __init__(self, address: str | None, max_retries: int, cpus: float, gpus: float) -> None:
        self.address = address
        self.max_retries = max_retries
        self.cpus = cpus
        self.gpus = gpus

    def connect(self) -> bool:
        """Join the cluster (or start a local one); True when this call did, so it shuts it down after."""
        import ray

        if ray.is_initialized():  # a driver that called ray.init itself
            return False
        if self.address:
            ray.init(address=self.address, include_dashboard=False)
        else:
            ray.init(include_dashboard=False)
        return True

    def run(self, context: GridContext, on_result: OnResult | None) -> list[RunResult]:
        """Submit all runs, report each as it ends; a run whose worker kept dying is marked FAILED."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        from cl_harness.grid.worker import run_planned
        from cl_harness.tracking.store import is_store_failure

        started_here = self.connect()
        spec = context.spec(max(1, math.ceil(self.cpus)))
        task = ray.remote(exits_as_errors).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, retry_exceptions=False
        )
        waiting = {task.remote(run_planned, spec, index): index for index in context.dispatch_order()}  # first runs of each prefix first
        results: dict[int, RunResult] = {}
        try:
            while waiting:
                (ref,), _ = ray.wait(list(waiting), num_returns=1)
                index = waiting.pop(ref)
                planned = context.runs[index]
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:  # an ordinary error in the run: FAILED, not retried
                    cause = exc.cause if exc.cause is not None else exc
                    if is_store_failure(cause):  # the store fails every run alike: stop the grid, as in one process
                        raise TrackingStoreError(f"in the worker of {planned.name}: {type(cause).__name__}: {cause}") from None
                    result = context.lost(planned, task_error(cause))
                except RayError as exc:  # the worker died on every attempt
                    reason = f"the Ray worker died on all {self.max_retries + 1} attempts ({type(exc).__name__})"
                    result = context.lost(planned, reason)
                results[index] = result
                if on_result is not None:
                    on_result(result)
        finally:
            for ref in waiting:
                ray.cancel(ref)  # KeyboardInterrupt in the task: the run ends KILLED, its checkpoint kept
            if started_here:
                ray.shutdown()
        return [results[i] for i in range(len(context.runs))]
