"""A reviewer's heavy work off the event loop, a few at a time: the export,
the admin pages that count or search a large table, the retrain's pairs.

Why: in the server every request and every chat is a greenlet on one gevent
event loop (chatbot/worker.py).  A database read or an encoder never
yields, so a query of a few seconds on a greenlet holds up every chat for
as long (and past gunicorn's ``timeout`` the worker is killed).  ``run``
calls the work on a real OS thread of gevent's ThreadPool instead, and the
greenlet waits for it without blocking the loop: SQLite lets go of the GIL
while it reads, and Python code on the thread gives the loop its turn every
switch interval (5 ms).  The thread continues the same request: it has the
caller's app and request contexts (``g``, the session, ``current_user``).

Bound: ``Slots`` counts the heavy jobs running, at most
``ADMIN_HEAVY_JOBS`` in the process (the pool's threads: each holds at most
one database connection) and ``ADMIN_HEAVY_JOBS_PER_REVIEWER`` of one
reviewer.  Past either the request is refused at once (429 for the
reviewer's own, 503 for all together, with Retry-After), never queued.  An
export holds its slot until its response is closed: the last chunk sent,
or the client gone.

Without gevent (tests with Flask's test client, the flask CLI) there is no
loop to free: the work runs on the caller's thread, and the bounds hold
the same.
"""
import contextlib
import functools
import sys
import threading

from flask import Response, current_app, stream_with_context
from flask.globals import _cv_app, _cv_request
from flask_login import current_user

from .batching import foreground
from .config import gevent_patched
from .memory import glibc_malloc_trim

EXTENSION = "chatbot.heavy"
RETRY_AFTER_SECONDS = 5
IDLE_THREAD_SECONDS = 2.0
SWITCH_INTERVAL_SECONDS = 0.001


class Busy(Exception):
    """Too many heavy jobs: ``why`` is "reviewer" (their own) or "total"."""

    def __init__(self, why):
        super().__init__(why)
        self.why = why


class Slots:
    """Heavy jobs running, in total and per reviewer."""

    def __init__(self, total: int, per_reviewer: int):
        self.total = max(1, total)
        self.per_reviewer = max(1, per_reviewer)
        self.running = 0
        self.by_reviewer = {}
        self._lock = threading.Lock()

    def take(self, reviewer):
        """Count a job of ``reviewer``, or raise Busy; ``give`` it back after."""
        with self._lock:
            if self.by_reviewer.get(reviewer, 0) >= self.per_reviewer:
                raise Busy("reviewer")
            if self.running >= self.total:
                raise Busy("total")
            self.running += 1
            self.by_reviewer[reviewer] = self.by_reviewer.get(reviewer, 0) + 1

    def give(self, reviewer):
        with self._lock:
            self.running -= 1
            left = self.by_reviewer.get(reviewer, 0) - 1
            if left > 0:
                self.by_reviewer[reviewer] = left
            else:
                self.by_reviewer.pop(reviewer, None)


class Heavy:
    """The slots and the threads of one app (``app.extensions[EXTENSION]``).

    When the last heavy job ends, glibc is asked to give its free pages back
    (``malloc_trim``, on a pool thread): a page of a million rows leaves tens
    of MB free in malloc's arenas, which it otherwise keeps (bench-attack's
    admin_pages_1m under half a core: the worker stayed 20% larger)."""

    def __init__(self, total: int, per_reviewer: int):
        self.slots = Slots(total, per_reviewer)
        self._pool = None
        self._pool_lock = threading.Lock()
        self.malloc_trim = glibc_malloc_trim()
        self.trims = 0

    def give(self, reviewer):
        """A job of ``reviewer`` ended: its slot back, and a trim if it was the last."""
        self.slots.give(reviewer)
        if self.slots.running == 0 and self.malloc_trim is not None and self._pool is not None:
            self._pool.spawn(self._trim)

    def _trim(self):
        if self.slots.running == 0:  # none started meanwhile: they would fill the pages again
            self.malloc_trim(0)
            self.trims += 1

    def pool(self):
        """gevent's ThreadPool, one thread per slot; None without gevent."""
        if self._pool is None and gevent_patched():
            with self._pool_lock:
                if self._pool is None:
                    from gevent.threadpool import ThreadPool

                    # Idle threads end after a while: a burst of exports leaves none behind.
                    self._pool = ThreadPool(self.slots.total, idle_task_timeout=IDLE_THREAD_SECONDS)
                    # A thread that encodes holds the GIL for the switch interval
                    # each time the loop or a model thread asks for it back, and a
                    # reply asks hundreds of times (after each NumPy product): 5 ms
                    # (Python's default) made a chat's reply wait that much more.
                    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        return self._pool


def heavy() -> Heavy:
    return current_app.extensions[EXTENSION]


def run(fn, *args):
    """``fn(*args)`` on a pool thread, in the caller's app and request
    contexts, waited for without blocking the event loop; or just called,
    without gevent."""
    pool = heavy().pool()
    if pool is None:
        return fn(*args)
    app_ctx, request_ctx = _cv_app.get(None), _cv_request.get(None)

    def in_context():
        # The very context objects, not copies: g (the CSP nonce, the
        # logged-in user) and the request are the caller's.  The caller waits
        # meanwhile, so the pushes and pops stay nested.
        if app_ctx is not None:
            app_ctx.push()
        try:
            if request_ctx is not None:
                request_ctx.push()
            try:
                return fn(*args)
            finally:
                if request_ctx is not None:
                    request_ctx.pop()
        finally:
            if app_ctx is not None:
                app_ctx.pop()

    return pool.apply(in_context)


def _reviewer():
    return current_user.id


def refusal(busy: Busy) -> Response:
    """The answer when no slot is free: nothing was started."""
    if busy.why == "reviewer":
        text, status = "이미 진행 중인 무거운 작업(내보내기, 검색, 통계)이 끝난 뒤에 다시 시도하세요.", 429
    else:
        text, status = "서버가 다른 검토자의 무거운 작업을 처리하는 중입니다. 잠시 뒤에 다시 시도하세요.", 503
    return Response(text + "\n", status=status, mimetype="text/plain",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@contextlib.contextmanager
def slot():
    """One of the logged-in reviewer's slots for the block; Busy when none is free."""
    reviewer = _reviewer()
    jobs = heavy()
    jobs.slots.take(reviewer)
    try:
        with foreground():  # background work waits for it (batching.wait_for_pause)
            yield
    finally:
        jobs.give(reviewer)


def page(view):
    """Decorate an admin view: it runs on a pool thread, in one of the
    reviewer's slots (or is refused when none is free)."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            with slot():
                return run(functools.partial(view, *args, **kwargs))
        except Busy as busy:
            return refusal(busy)
    return wrapper


_END = object()


def streamed(chunks, **response_args) -> Response:
    """A response that sends ``chunks`` (an iterator of text), each one
    produced on a pool thread, in one of the reviewer's slots for as long as
    the response is open; or the refusal, when no slot is free."""
    reviewer = _reviewer()
    jobs = heavy()
    try:
        jobs.slots.take(reviewer)
    except Busy as busy:
        return refusal(busy)
    given = []

    def give_back():
        if not given:
            given.append(True)
            jobs.give(reviewer)

    def each_on_a_thread():
        try:
            while (chunk := run(next, chunks, _END)) is not _END:
                yield chunk
        finally:
            chunks.close()
            give_back()

    response = Response(stream_with_context(each_on_a_thread()), **response_args)
    response.call_on_close(give_back)  # also when the body was never iterated
    return response


def init_app(app):
    app.extensions[EXTENSION] = Heavy(app.config["ADMIN_HEAVY_JOBS"], app.config["ADMIN_HEAVY_JOBS_PER_REVIEWER"])
