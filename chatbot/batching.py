"""Answer chats that arrive together with one model call, off the event loop.

Chat handlers hand their question to a ReplyBatcher and wait.  A few
dispatchers (one per core by default) take whatever questions are waiting, up
to ``batch_max`` of them, and have the model answer them as one batch: a
small GRU costs little more for eight questions than for one, so under load
replies per second go up while a lone question is answered at once.

The model always runs on real OS threads.  In the server (gunicorn's gevent
worker, where ``threading`` is patched and every chat is a greenlet) the
dispatchers are greenlets that hand each model call to a gevent ThreadPool of
``workers`` OS threads and wait for it cooperatively: NumPy releases the GIL
in its matrix products, and the event loop goes on serving every other socket.
Without gevent (tests, the flask CLI) the dispatchers are OS threads that
call the model themselves.

A batch is answered in two steps, each one call on a model thread: the
known answers first (sent at once), then the replies the network writes.

At most ``queue_max`` questions wait; past that ``answer`` raises Busy at
once, so a flood turns into quick `busy` answers instead of a pile of waiting
chats.
"""
import contextlib
import os
import queue
import threading
import time
from concurrent.futures import Future

from .config import gevent_patched

PAUSE_SECONDS = 0.1  # background work waits until no one has waited on the server for this long ...
LONGEST_WAIT_SECONDS = 2.0  # ... or this long at most, so that it still moves under a steady load
BACKGROUND_STEP = 8  # questions a background job embeds between two waits (about 0.2 s of one core)


class Busy(Exception):
    """Too many questions are already waiting for the model."""


# Work a person waits for, running now: a batch of chat replies, a reviewer's
# heavy page or download.  Background work (run_in_background) waits for a
# pause in it: a lower CPU priority (nice 19) is not enough under a CPU quota
# (a small VM's, or a container's), where the background's share of the
# quota is taken from the pages and chats that come next (bench/README.md,
# "admin pages under half a core").  Changed on the event loop (or, without
# gevent, on the threads that do the work); only read by the background thread.
_foreground = {"running": 0, "ended": 0.0}
_foreground_lock = threading.Lock()


@contextlib.contextmanager
def foreground():
    """Count the block as work someone waits for."""
    with _foreground_lock:
        _foreground["running"] += 1
    try:
        yield
    finally:
        with _foreground_lock:
            _foreground["running"] -= 1
            _foreground["ended"] = time.monotonic()


def wait_for_pause() -> bool:
    """On a background thread: return once no foreground work has run for
    PAUSE_SECONDS (True), or after LONGEST_WAIT_SECONDS (False).  A real
    sleep: in the server this is an OS thread of its own, not the event loop."""
    pause, longest = PAUSE_SECONDS, LONGEST_WAIT_SECONDS
    sleep = time.sleep
    if gevent_patched():
        from gevent import monkey

        sleep = monkey.get_original("time", "sleep")
    deadline = time.monotonic() + longest
    while True:
        now = time.monotonic()
        if _foreground["running"] == 0 and now - _foreground["ended"] >= pause:
            return True
        if now >= deadline:
            return False
        sleep(min(0.02, pause))


def _model_runner(workers: int):
    """``run(fn, *args)``: call fn on a real OS thread and wait for it
    without blocking the event loop (gevent), or just call it (threads)."""
    if gevent_patched():
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(workers)
        return lambda fn, *args: pool.apply(fn, args)
    return lambda fn, *args: fn(*args)


def lower_priority():
    """This OS thread to the lowest CPU priority (nice 19, Linux: per
    thread), for good: taking it back up needs privileges."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: it runs at the usual priority
        pass


def _background_runner():
    """``run(fn, *args)`` on one OS thread of the lowest CPU priority, after
    a pause in the foreground work (wait_for_pause), waited for without
    blocking the event loop (gevent); without gevent, on the caller's
    thread, lowered (callers are threads of their own)."""
    def lowered(fn, *args):
        lower_priority()
        wait_for_pause()
        return fn(*args)

    if gevent_patched():
        from gevent.threadpool import ThreadPool

        pool = ThreadPool(1)
        return lambda fn, *args: pool.apply(lowered, (fn, *args))
    return lowered


class ReplyBatcher:
    """Answer ``bot``'s questions in batches; see the module docstring.

    ``bot`` is a bot.Chatbot, or anything with its ``known_replies(texts)
    -> (prepared, replies)`` (``known_replies(texts, reviewed, keys)`` when
    a question comes with the reviewed answers) and ``write_replies(prepared,
    indices)``.
    """

    def __init__(self, workers: int = 1, batch_max: int = 8, window_ms: float = 0.0, queue_max: int = 256):
        self.workers = max(1, workers)
        self.batch_max = max(1, batch_max)
        self.window = max(0.0, window_ms) / 1000
        self.queue_max = max(1, queue_max)
        self._queue = queue.Queue()
        self._started = False
        self._start_lock = threading.Lock()
        self._run = None
        self._background = None

    def waiting(self) -> int:
        """Questions not yet taken by a dispatcher."""
        return self._queue.qsize()

    def answer(self, bot, text: str, reviewed=None, key: str = ""):
        """``bot``'s reply to ``text`` (a bot.Reply), blocking until computed;
        with ``reviewed`` (a build of chatbot/corrections.py) and the
        question's ``key`` (morph.question_key), the reviewers' answers are
        weighed in the same step.  Raises Busy when ``queue_max`` questions
        are waiting."""
        self._start()
        if self._queue.qsize() >= self.queue_max:
            raise Busy()
        future = Future()
        self._queue.put((bot, reviewed, text, key, future))
        return future.result()

    def run(self, fn, *args):
        """Call ``fn`` on a model thread (see _model_runner)."""
        self._start()
        return self._run(fn, *args)

    def run_in_background(self, fn, *args):
        """Call ``fn`` on a thread of the lowest CPU priority, in a pause of
        the chats and the admin pages: work that no one waits for (a bulk
        import's reviewed questions to embed) gets the CPU they leave."""
        with self._start_lock:
            if self._background is None:
                self._background = _background_runner()
        return self._background(fn, *args)

    def _start(self):
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._run = _model_runner(self.workers)
                for i in range(self.workers):
                    threading.Thread(target=self._dispatch, name=f"reply-dispatcher-{i}", daemon=True).start()
                self._started = True

    def _take_batch(self):
        """The next request, and any that arrive within the window, up to batch_max."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.window
        while len(batch) < self.batch_max:
            try:
                timeout = deadline - time.monotonic()
                batch.append(self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _dispatch(self):
        while True:
            batch = self._take_batch()
            # Requests that came in across a model swap (or a new build of
            # the reviewed answers) hold different ones.
            groups = {}
            for bot, reviewed, text, key, future in batch:
                groups.setdefault((id(bot), id(reviewed)), (bot, reviewed, []))[2].append((text, key, future))
            for bot, reviewed, requests in groups.values():
                try:
                    with foreground():
                        self._answer_batch(bot, reviewed, requests)
                except BaseException as exc:  # the waiting chats get the error, the dispatcher lives on
                    for *_, future in requests:
                        if not future.done():
                            future.set_exception(exc)

    def _answer_batch(self, bot, reviewed, requests):
        texts = [text for text, _, _ in requests]
        if reviewed is None:
            prepared, replies = self._run(bot.known_replies, texts)
        else:
            prepared, replies = self._run(bot.known_replies, texts, reviewed, [key for _, key, _ in requests])
        # A known answer goes out at once; it does not wait for the replies
        # the network still has to write.
        for (*_, future), reply in zip(requests, replies):
            if reply is not None:
                future.set_result(reply)
        todo = [i for i, reply in enumerate(replies) if reply is None]
        if todo:
            written = self._run(bot.write_replies, prepared, todo)
            for i, reply in zip(todo, written):
                requests[i][2].set_result(reply)
