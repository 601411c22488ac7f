"""Run one component in the foreground (`minicdn storage-node|query-service|replicator --config FILE`) through
the composition root each service package keeps for its process."""

from __future__ import annotations

import asyncio
import os
import shutil
from functools import partial
from typing import Any

from common import reqlog
from common.config import Settings


def run_storage_node(
    settings: Settings,
    config: str | None = None,
    worker: int | None = None,
    ready_fd: int | None = None,
    lock_fds: tuple[int, ...] = (),
) -> None:
    """The node's own serve loop (not ``web.run_app``): on SIGTERM it announces that it is stopping and keeps
    accepting for a grace period before it stops listening. With ``node.workers`` above one this process takes the
    data directories' lock, empties their tmp/ (no process of the node runs yet), and supervises the workers
    (``minicdn.workers``): each is this command again with ``--worker`` and the lock's inherited descriptors."""
    from replicator.node_root import serve_node
    from storage_node.objects.dirlock import DirLocked
    from storage_node.worker_reports import Role

    count = node_workers(settings)
    try:
        if worker is None and count > 1:
            raise SystemExit(_supervise_node(settings, config, count))
        role = Role(worker or 0, count)
        on_ready = partial(_signal_ready, ready_fd) if ready_fd is not None else None
        asyncio.run(serve_node(settings, role, lock_fds, on_ready, **_access_log("storage-node")))
    except DirLocked as exc:  # a second start on a live node's directory: one clear line, nothing touched
        raise SystemExit(f"minicdn storage-node: {exc}") from None


def _supervise_node(settings: Settings, config: str | None, count: int) -> int:
    from common.procs import python_module
    from minicdn.workers import PortInUse, check_port_free, run_workers
    from replicator.node_root import SHUTDOWN_TIMEOUT_S
    from storage_node.app import METRICS_DIR_ENV
    from storage_node.objects import dirlock
    from storage_node.objects.store import Store

    node = settings.node
    lock = dirlock.acquire(node.data_dir, node.cold_dir)  # first: nothing is touched under another live node
    try:
        check_port_free(node.host, node.port)
    except PortInUse as exc:
        raise SystemExit(f"minicdn storage-node: {exc}") from None
    store = Store(node.data_dir, cold_dir=node.cold_dir)
    store.empty_tmp()  # the workers' primary leaves tmp/ alone
    # Inherited by every worker (prometheus_client's multiprocess mode). In tmp/: what a killed parent leaves there
    # is emptied at the node's next start.
    metrics_dir = store.tmp / "metrics"
    metrics_dir.mkdir()
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    options = ["--config", config] if config else []
    fds = ",".join(str(fd) for fd in lock.fds)

    def command(index: int, fd: int) -> list[str]:
        return python_module(
            "minicdn.cli", "storage-node", *options, "--worker", str(index), "--ready-fd", str(fd), "--lock-fds", fds
        )

    try:
        # A worker's stop: the grace period, then the requests in flight; beyond that with a margin it is killed.
        stop_s = node.stop_grace_s + SHUTDOWN_TIMEOUT_S + 10
        return run_workers(count, command, stop_timeout_s=stop_s, pass_fds=lock.fds)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        lock.release()


def node_workers(settings: Settings) -> int:
    """``node.workers``, 0 meaning the number of cores."""
    return settings.node.workers or os.cpu_count() or 1


def _signal_ready(fd: int) -> None:
    from minicdn.workers import signal_ready

    signal_ready(fd)


def run_query_service(
    settings: Settings, config: str | None = None, worker: int | None = None, ready_fd: int | None = None
) -> None:
    """One process, or ``query.workers`` of them on the port (``minicdn.workers``): this process then only
    supervises, and each worker is this command again with ``--worker`` (and ``config``, re-read by each)."""
    from query_service.app import serve

    count = query_workers(settings)
    if worker is None and count > 1:
        from common.procs import python_module
        from minicdn.workers import PortInUse, check_port_free, run_workers

        try:
            check_port_free(settings.query.host, settings.query.port)
        except PortInUse as exc:
            raise SystemExit(f"minicdn query-service: {exc}") from None
        options = ["--config", config] if config else []

        def command(index: int, fd: int) -> list[str]:
            return python_module(
                "minicdn.cli", "query-service", *options, "--worker", str(index), "--ready-fd", str(fd)
            )

        raise SystemExit(run_workers(count, command))

    def ready() -> None:
        if ready_fd is not None:
            from minicdn.workers import signal_ready

            signal_ready(ready_fd)

    asyncio.run(
        serve(settings, worker=worker or 0, reuse_port=count > 1, on_ready=ready, **_access_log("query-service"))
    )


def query_workers(settings: Settings) -> int:
    """``query.workers``, 0 meaning the number of cores this process may run on (its CPU affinity)."""
    return settings.query.workers or len(os.sched_getaffinity(0)) or 1


def _access_log(component: str) -> dict[str, Any]:
    """run_app arguments for the one-line-per-request log (common.reqlog)."""
    return {"access_log": reqlog.access_logger, "access_log_class": reqlog.access_logger_for(component)}


def run_replicator(settings: Settings) -> None:
    from replicator.standalone import run

    run(settings)
