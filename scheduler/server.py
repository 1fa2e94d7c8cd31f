"""Running the scheduler: the store, the engine and the API in one asyncio process, with
a graceful stop (new requests refused, attempts in flight finished within a grace
period, their leases otherwise left to lapse so another start runs them again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from .api import DEFAULT_EXPIRATION, Api
from .callers import Callers
from .clock import clock_for
from .concurrency import Limiter
from .connections import (
    AnswersSeen,
    BoundedSite,
    connection_cap,
    quiet_accept_errors,
    raise_fd_limit,
)
from .engine import Engine
from .http_caller import HttpCaller
from .retention import Retention
from .settings import POSTGRES_SCHEMES, Settings, is_database_url
from .store import Store
from .store.sqlite import SQLiteStore
from .ticker import Ticker

logger = logging.getLogger(__name__)

# Settings and the database URL test lived here first; their home is settings.py.
__all__ = ["POSTGRES_SCHEMES", "Settings", "is_database_url", "open_store", "serve"]


async def open_store(database: str) -> Store:
    """The store ``database`` names: a PostgreSQL URL (``postgresql://...``, several
    scheduler processes may share it), else a SQLite file's path."""
    if is_database_url(database):
        try:
            from .store.postgres import PostgresStore
        except ImportError as exc:
            from .store import StoreError

            raise StoreError(
                f"a PostgreSQL database needs psycopg: pip install 'dispatchlet[postgres]' ({exc})"
            ) from None
        return await PostgresStore.open(database)
    return await SQLiteStore.open(database)


async def serve(
    settings: Settings,
    *,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
    stop: asyncio.Event | None = None,
    stopping: Callable[[int], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve until SIGINT, SIGTERM or ``stop`` is set; ``ready`` is told the addresses
    listened on, ``stopping`` how many attempts are in flight when the stop begins. With
    ``handle_signals=False`` the caller handles SIGINT and SIGTERM (and sets ``stop``)."""
    store = await open_store(settings.database)
    # One time for leases, readiness and expiry: the database's when processes share it.
    try:
        clock = await clock_for(store)
    except BaseException:
        await store.close()
        raise
    caller = Callers(
        HttpCaller(
            settings.signing_key,
            insecure=settings.insecure,
            max_output_size=settings.max_output_size,
        )
    )
    engine = Engine(
        store,
        caller,
        policy=settings.policy,
        attempt_timeout=settings.attempt_timeout,
        # A lease outlasts its attempt; it lapses soon after one that died with its process.
        lease_margin=min(30.0, settings.attempt_timeout),
        limiter=Limiter(cap=settings.max_per_destination),
        max_input_size=settings.max_input_size,
        max_children=settings.max_children,
        max_descendants=settings.max_descendants,
        max_output_size=settings.max_output_size,
        clock=clock,
        attempt_history=settings.attempt_history,
    )
    # Deletes the finished trees past the window in the background (none: 0).
    retention = Retention(
        store, clock, settings.retention, counted=engine.metrics.retention_deleted.inc
    )

    def ticked(count: int) -> None:
        engine.metrics.schedule_ticks.inc(count)
        engine.wake()  # the ticks' calls are ready now

    # Dispatches the schedules' ticks in the background.
    ticker = Ticker(
        engine.metrics.timed(store),
        clock,
        expiration=DEFAULT_EXPIRATION,
        dispatched=ticked,
    )
    api = Api(
        store,
        engine,
        retention=retention,
        ticker=ticker,
        api_keys=settings.api_keys,
        insecure=settings.insecure,
        allowed_hosts=settings.allowed_hosts,
        max_input_size=settings.max_input_size,
        body_timeout=settings.body_timeout,
        metrics_keys=settings.metrics_keys,
        metrics_public=settings.metrics_public,
        dashboard=settings.dashboard,
    )
    # aiohttp's keep-alive timer runs from a connection's start and from each answer
    # until a whole request head has arrived: it bounds idle connections and slow heads.
    # No access log: its hook tells the site when a connection is idle again.
    runner = web.AppRunner(
        api.app(),
        access_log=logger,
        access_log_class=AnswersSeen,
        handle_signals=False,
        keepalive_timeout=settings.keepalive_timeout,
        # A Wait whose client went away stops waiting.
        handler_cancellation=True,
    )
    await runner.setup()
    stopped = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    exception_handler = quiet_accept_errors(loop)
    fd_limit = raise_fd_limit()
    max_connections = connection_cap(settings.max_connections, fd_limit)
    if max_connections < settings.max_connections:
        logger.warning(
            "at most %d connections (not %d): the open files limit is %d (raise it, e.g. "
            "LimitNOFILE= in a systemd unit, or ulimit -n)",
            max_connections,
            settings.max_connections,
            fd_limit,
        )
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    retention_task: asyncio.Task[None] | None = None
    ticker_task: asyncio.Task[None] | None = None
    for signum in signals:
        loop.add_signal_handler(signum, stopped.set)
    try:
        site = BoundedSite(
            runner,
            settings.host,
            settings.port,
            reuse_port=settings.reuse_port,
            max_connections=max_connections,
            max_per_client=settings.max_connections_per_client,
            direct=api.direct(),
            keepalive_timeout=settings.keepalive_timeout,
        )
        await site.start()
        if ready is not None:
            ready([(str(a[0]), int(a[1])) for a in runner.addresses])
        engine_task = asyncio.create_task(engine.run())
        retention_task = asyncio.create_task(retention.run())
        ticker_task = asyncio.create_task(ticker.run())
        stop_task = asyncio.create_task(stopped.wait())
        await asyncio.wait({engine_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        await site.stop()
        engine.stop()
        if stopping is not None:
            stopping(engine.in_flight)
        try:
            await asyncio.wait_for(asyncio.shield(engine_task), settings.grace_period)
        except (TimeoutError, asyncio.TimeoutError):
            logger.warning(
                "attempts still running after %s s: left to their leases", settings.grace_period
            )
            engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine_task
        stop_task.cancel()
    finally:
        retention.stop()
        ticker.stop()
        if ticker_task is not None:
            await ticker_task  # a transaction in flight commits, then it stops
        if retention_task is not None:
            await retention_task  # a batch in flight commits, then it stops
        for signum in signals:
            loop.remove_signal_handler(signum)
        loop.set_exception_handler(exception_handler)
        await runner.cleanup()
        await caller.close()
        await clock.close()
        await store.close()
