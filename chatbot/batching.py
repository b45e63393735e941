"""Answer chats that arrive together with one model call.

Socket handler threads hand their question to a ReplyBatcher and wait.  A few
worker threads (one per core by default) take whatever questions are waiting,
up to ``batch_max`` of them, and decode them as one batch: a small GRU costs
little more for eight questions than for one, so under load replies per
second go up while a lone question is answered at once.  PyTorch then runs
only on the worker threads, which also keeps memory flat however many chats
are connected.
"""
import queue
import threading
import time
from concurrent.futures import Future


class ReplyBatcher:
    """Compute ``bot.reply_batch(texts, on_reply)`` on worker threads, batching requests."""

    def __init__(self, workers: int = 1, batch_max: int = 8, window_ms: float = 0.0):
        self.workers = max(1, workers)
        self.batch_max = max(1, batch_max)
        self.window = max(0.0, window_ms) / 1000
        self._queue = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def answer(self, bot, text: str) -> tuple[str, bool]:
        """(reply, known) of ``bot`` (a model.Chatbot) to ``text``, blocking
        until computed: known is True for a training pair's answer, False for
        one the network wrote."""
        self._start()
        future = Future()
        self._queue.put((bot, text, future))
        return future.result()

    def _start(self):
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                for i in range(self.workers):
                    threading.Thread(target=self._work, name=f"reply-worker-{i}", daemon=True).start()
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

    def _work(self):
        while True:
            batch = self._take_batch()
            # Requests that came in across a model swap hold different models.
            by_bot = {}
            for bot, text, future in batch:
                by_bot.setdefault(id(bot), (bot, []))[1].append((text, future))
            for bot, requests in by_bot.values():
                # A known answer goes out at once; it does not wait for the
                # replies the network still has to write.
                def answered(i, reply, known, requests=requests):
                    requests[i][1].set_result((reply, known))

                try:
                    replies = bot.reply_batch([text for text, _ in requests], on_reply=answered)
                except BaseException as exc:  # the waiting chats get the error, the worker lives on
                    for _, future in requests:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), reply in zip(requests, replies):
                        if not future.done():
                            future.set_result((reply, False))
