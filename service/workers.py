"""`chatledger serve`: one worker in this process, or N worker processes sharing one port.

Each worker is a whole server: its own event loop (uvloop when installed), its own Redis pool, its own
listening socket. With `--workers N` the parent spawns N workers that each bind the port with
SO_REUSEPORT, so the kernel spreads new connections over them and no request passes through the parent.
The parent only supervises (design.md section 9):

- it reports the service ready once every worker listens, and fails (exit 1) if a worker dies before it
  was ready: a worker that cannot boot (Redis unreachable, port taken) would fail again;
- it respawns a worker that dies after it was ready;
- on SIGTERM or SIGINT it sends SIGTERM to every worker and waits for them. A worker stops accepting at
  once, gives in-flight requests `shutdown_timeout_s` to finish, then cancels the rest (their holds are
  voided) and closes its Redis pool. A second SIGINT (Ctrl-C twice) kills the workers at once.

Workers run in their own process group, so a terminal's Ctrl-C reaches the parent only and the workers
are stopped once, in order; a worker whose parent disappears (its pipe closes) stops itself.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import structlog
from aiohttp import web

from service.app import create_app
from service.delay import install_message_delay
from service.logging import configure_logging
from service.protocol import EdgeAppRunner
from service.settings import Settings

log = structlog.get_logger("chatledger")

# Pending connections per worker socket; the kernel caps it at net.core.somaxconn.
BACKLOG = 1024
# What a worker sends its parent once its socket listens.
READY = b"ready"
# Time a stopping worker has beyond shutdown_timeout_s to close its pools before it is killed.
STOP_GRACE_S = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Allocations of container objects between two young-generation collections (CPython's default is 700).
# Under load a worker's young objects are mostly those of the requests in flight, a few thousand that a
# collection traverses only to keep, so at 700 it ran every few dozen requests for nothing. Reference
# cycles are rare here, so they wait a little longer to be freed, and no more.
GC_YOUNG_THRESHOLD = 7000


def serve(settings: Settings) -> int:
    """Run the API until SIGTERM or SIGINT; the exit status."""
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers == 1:
        return run_worker(settings, reuse_port=False)
    return Supervisor(settings).run()


def build_app(settings: Settings) -> web.Application:
    """The application a worker serves: create_app plus the test and demo hook, if set."""
    app = create_app(settings)
    install_message_delay(app)
    return app


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The runner of a worker's app: JSON answers for what aiohttp's parser refuses, and the
    header-read timeout (service/protocol.py); no access log, since the middleware logs each request."""
    return EdgeAppRunner(
        app,
        header_timeout_s=settings.header_timeout_s,
        keepalive_timeout=settings.keepalive_timeout_s,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (`pip install chatledger[fast]`), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def base_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.port}{settings.api_prefix}"


# --- one worker ------------------------------------------------------------------------------------------
def run_worker(settings: Settings, *, reuse_port: bool, parent: Connection | None = None) -> int:
    """Serve in this process until a stop signal (or, for a spawned worker, until the parent is gone)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(settings, reuse_port=reuse_port, parent=parent))
    return 0


async def _serve(settings: Settings, *, reuse_port: bool, parent: Connection | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # The signals only set an event: the shutdown below then runs as ordinary code, once, and a
    # repeated signal cannot interrupt it half-way (as a GracefulExit raised from a handler can).
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if parent is not None:
        # The parent never writes after the start, so a readable pipe means it closed: the parent died.
        loop.add_reader(parent.fileno(), _on_parent_gone, loop, parent, stop)
    runner = make_runner(build_app(settings), settings)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port, backlog=BACKLOG)
        await site.start()
        tune_garbage_collector()
        # `loop` says whether uvloop is in use ("uvloop") or asyncio's own loop ("asyncio").
        log.info(
            "worker_listening",
            pid=os.getpid(),
            url=base_url(settings),
            loop=type(loop).__module__.split(".")[0],
            gc_young_threshold=gc.get_threshold()[0],
        )
        if parent is None:
            print(f"======== Running on {base_url(settings)} ========", file=sys.stderr, flush=True)
        else:
            parent.send_bytes(READY)
        await stop.wait()
        log.info(
            "worker_stopping",
            pid=os.getpid(),
            open_connections=len(runner.server.connections) if runner.server else 0,
            shutdown_timeout_s=settings.shutdown_timeout_s,
        )
    finally:
        # Stops the listener, waits for in-flight requests (up to shutdown_timeout_s), then runs the
        # app's cleanup contexts, which close the Redis pool.
        await runner.cleanup()
    log.info("worker_stopped", pid=os.getpid())


def tune_garbage_collector() -> None:
    """Once a worker is set up: collect young objects less often (GC_YOUNG_THRESHOLD), and freeze what
    exists now (modules, the app, its pools) out of the collector's sight. A full collection traverses
    every tracked object; the frozen ones are most of them and live as long as the worker, so full
    collections, which otherwise took each tens of milliseconds, now traverse only what requests left."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _on_parent_gone(loop: asyncio.AbstractEventLoop, parent: Connection, stop: asyncio.Event) -> None:
    loop.remove_reader(parent.fileno())
    log.warning("parent_gone", pid=os.getpid(), note="The serve parent exited; this worker stops.")
    stop.set()


def _worker_main(settings: Settings, parent: Connection) -> None:
    """Entry point of a spawned worker process."""
    os.setpgrp()
    configure_logging(settings.log_format, settings.log_level)
    sys.exit(run_worker(settings, reuse_port=True, parent=parent))


# --- the supervisor ----------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, index: int, process: BaseProcess, pipe: Connection) -> None:
        self.index = index
        self.process = process
        self.pipe = pipe
        self.ready = False
        # The worker's end closed: it is exiting. Ours stays open while it runs: closing it stops it.
        self.pipe_closed = False


class Supervisor:
    """Spawns, watches and stops the worker processes of one `serve --workers N`."""

    def __init__(self, settings: Settings) -> None:
        # Workers bind the port themselves; each would pick its own port for 0 (refused in cli.py).
        assert settings.workers > 1
        assert settings.port != 0
        self.settings = settings
        # Spawned, not forked: a worker starts clean (no inherited loop, pools or locks).
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._wakeup_read, self._wakeup_write = socket.socketpair()

    def run(self) -> int:
        """Serve until a stop signal; 0 when every worker then stopped cleanly, else 1."""
        self._install_signal_handlers()
        try:
            for index in range(self.settings.workers):
                self._workers.append(self._spawn(index))
            healthy = self._supervise()
        finally:
            clean = self._stop_all()
            self._restore_signal_handlers()
        return 0 if healthy and clean else 1

    def _spawn(self, index: int) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(self.settings, theirs), name=f"chatledger-worker-{index}"
        )
        process.start()
        theirs.close()
        log.info("worker_started", index=index, pid=process.pid)
        return _Worker(index, process, ours)

    def _supervise(self) -> bool:
        """Wait for signals and worker events; False if a worker failed to boot."""
        announced = False
        while True:
            waitables: list[Connection | socket.socket | int] = [self._wakeup_read]
            for worker in self._workers:
                waitables.append(worker.process.sentinel)
                if not worker.ready and not worker.pipe_closed:
                    waitables.append(worker.pipe)
            if self._wakeup_read in wait(waitables):
                log.info("stop_requested", signals=list(self._wakeup_read.recv(64)))
                return True
            for worker in list(self._workers):
                if not self._check(worker):
                    return False
            if not announced and all(worker.ready for worker in self._workers):
                announced = True
                log.info("workers_ready", workers=len(self._workers), url=base_url(self.settings))
                print(
                    f"======== Running on {base_url(self.settings)} with {len(self._workers)} "
                    "workers ========",
                    file=sys.stderr,
                    flush=True,
                )

    def _check(self, worker: _Worker) -> bool:
        """Take a worker's news: ready, or exited (respawned if it had been ready)."""
        if not worker.ready and not worker.pipe_closed and worker.pipe.poll():
            try:
                worker.ready = worker.pipe.recv_bytes() == READY
            except EOFError:
                worker.pipe_closed = True  # the worker is exiting: its sentinel says so
        if worker.process.is_alive():
            return True
        worker.process.join()
        worker.pipe.close()
        self._workers.remove(worker)
        if not worker.ready:
            log.error("worker_boot_failed", index=worker.index, exitcode=worker.process.exitcode)
            return False
        log.error("worker_died", index=worker.index, exitcode=worker.process.exitcode)
        self._workers.append(self._spawn(worker.index))
        return True

    def _stop_all(self) -> bool:
        """SIGTERM every worker and wait for them; kill what is left after the grace, or at once on a
        second SIGINT (Ctrl-C twice). A repeated SIGTERM changes nothing: some process managers send it
        more than once. True if every worker exited with status 0."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + STOP_GRACE_S
        pending = [w for w in self._workers if w.process.exitcode is None]
        while pending:
            remaining = deadline - time.monotonic()
            waitables: list[Connection | socket.socket | int] = [self._wakeup_read]
            waitables.extend(w.process.sentinel for w in pending)
            ready = wait(waitables, max(remaining, 0))
            interrupted = self._wakeup_read in ready and signal.SIGINT in self._wakeup_read.recv(64)
            if interrupted or remaining <= 0:
                log.warning("workers_killed", pids=[w.process.pid for w in pending])
                for worker in pending:
                    worker.process.kill()
                for worker in pending:
                    worker.process.join()
                break
            pending = [w for w in pending if w.process.exitcode is None]
        codes = {w.index: w.process.exitcode for w in self._workers}
        for worker in self._workers:
            worker.pipe.close()
        log.info("workers_stopped", exitcodes=codes)
        return all(code == 0 for code in codes.values())

    def _install_signal_handlers(self) -> None:
        # Python runs the no-op handler; the wakeup fd carries the signal number to wait() above.
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wakeup_write.fileno())
        self._previous_handlers = {s: signal.signal(s, _ignore_signal) for s in _STOP_SIGNALS}

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._wakeup_read.close()
        self._wakeup_write.close()


def _ignore_signal(_signum: int, _frame: object) -> None:
    """The signal's number reaches the supervisor through the wakeup fd; nothing to do here."""
