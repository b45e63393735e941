"""The reply batcher: one model call for questions that arrive together."""
import threading
import time

import pytest

from chatbot.batching import Busy, ReplyBatcher
from chatbot.bot import Reply
from helpers import run_in_a_gevent_process


class SlowBot:
    """Stands in for bot.Chatbot: writes every reply, and records the
    batches it was given."""

    def __init__(self, seconds=0.05):
        self.seconds = seconds
        self.batches = []

    def known_replies(self, texts):
        self.batches.append(list(texts))
        return list(texts), [None] * len(texts)

    def write_replies(self, texts, indices):
        time.sleep(self.seconds)
        return [Reply(f"re: {texts[i]}", False, 0.5) for i in indices]


class KnownFirstBot:
    """Known answers (texts starting with "known") at once, the others after a while."""

    def __init__(self, seconds=0.5):
        self.seconds = seconds

    def known_replies(self, texts):
        return list(texts), [Reply(f"re: {t}", True, 0.9) if t.startswith("known") else None for t in texts]

    def write_replies(self, texts, indices):
        time.sleep(self.seconds)  # the network writing the rest
        return [Reply(f"re: {texts[i]}", False, 0.5) for i in indices]


def ask_all(batcher, bot, texts):
    replies = [None] * len(texts)

    def ask(i):
        replies[i] = batcher.answer(bot, texts[i]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join(10)
    return replies


def test_each_caller_gets_its_own_reply():
    bot = SlowBot()
    texts = [f"질문 {i}" for i in range(20)]
    assert ask_all(ReplyBatcher(workers=2, batch_max=8), bot, texts) == [f"re: {t}" for t in texts]


def test_questions_waiting_together_are_batched():
    bot = SlowBot(seconds=0.1)
    ask_all(ReplyBatcher(workers=1, batch_max=8), bot, [str(i) for i in range(12)])
    assert max(len(b) for b in bot.batches) > 1
    assert all(len(b) <= 8 for b in bot.batches)
    assert sum(len(b) for b in bot.batches) == 12


def test_batch_max_one_answers_one_at_a_time():
    bot = SlowBot(seconds=0.01)
    ask_all(ReplyBatcher(workers=1, batch_max=1), bot, [str(i) for i in range(6)])
    assert [len(b) for b in bot.batches] == [1] * 6


def test_a_lone_question_does_not_wait_for_company():
    bot = SlowBot(seconds=0)
    batcher = ReplyBatcher(workers=1, batch_max=8)
    batcher.answer(bot, "warm-up")
    start = time.monotonic()
    assert batcher.answer(bot, "안녕") == Reply("re: 안녕", False, 0.5)
    assert time.monotonic() - start < 0.05


def test_a_failing_model_raises_in_the_caller_and_the_worker_survives():
    class BrokenBot(SlowBot):
        def write_replies(self, texts, indices):
            raise RuntimeError("model exploded")

    batcher = ReplyBatcher(workers=1, batch_max=4)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.answer(BrokenBot(), "안녕")
    assert batcher.answer(SlowBot(seconds=0), "안녕") == Reply("re: 안녕", False, 0.5)


def test_requests_for_different_models_are_not_mixed():
    old, new = SlowBot(seconds=0.05), SlowBot(seconds=0.05)
    batcher = ReplyBatcher(workers=1, batch_max=8)
    replies = [None] * 6

    def ask(i):
        replies[i] = batcher.answer(old if i % 2 else new, str(i)).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert replies == [f"re: {i}" for i in range(6)]
    assert sorted(t for b in old.batches for t in b) == ["1", "3", "5"]
    assert sorted(t for b in new.batches for t in b) == ["0", "2", "4"]


def test_a_known_answer_does_not_wait_for_written_ones_in_its_batch():
    bot = KnownFirstBot(seconds=0.5)
    batcher = ReplyBatcher(workers=1, batch_max=8, window_ms=150)  # all four land in one batch
    done = {}

    def ask(text):
        started = time.monotonic()
        reply = batcher.answer(bot, text)
        assert (reply.text, reply.known) == (f"re: {text}", text.startswith("known"))
        done[text] = time.monotonic() - started

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("written 1", "known 1", "written 2", "known 2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(done) == 4
    # The batch takes 0.15 s to gather and 0.5 s to write; known answers come back before that.
    assert max(done["known 1"], done["known 2"]) < 0.45 < min(done["written 1"], done["written 2"])


def test_a_full_queue_answers_busy_at_once():
    bot = SlowBot(seconds=0.3)
    batcher = ReplyBatcher(workers=1, batch_max=1, queue_max=2)
    results = []

    def ask(i):
        try:
            results.append(batcher.answer(bot, str(i)).text)
        except Busy:
            results.append("busy")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # the first is taken by the worker, two wait, the rest find the queue full
    for t in threads:
        t.join(10)
    assert results[:3] == ["busy"] * 3  # answered before any reply: they did not wait for the model
    assert sorted(results[3:]) == ["re: 0", "re: 1", "re: 2"]
    assert batcher.waiting() == 0


def test_background_work_runs_at_the_lowest_cpu_priority_and_chats_do_not():
    """In a gevent process, as the server's worker: run_in_background's
    thread is at nice 19 (a bulk import's embedding takes the CPU the chats
    and admin pages leave); the model threads and the event loop stay at 0."""
    code = ("import os, threading\nfrom chatbot.batching import ReplyBatcher\n"
            "b = ReplyBatcher()\nnice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
            "print(b.run_in_background(nice), b.run(nice), nice(), b.run_in_background(nice))")
    done = run_in_a_gevent_process(code)
    assert done.stdout.split() == ["19", "0", "0", "19"]


def test_background_work_waits_for_a_pause_in_the_chats_and_pages(monkeypatch):
    """Under a CPU quota a low priority is not enough: background work starts
    only once no chat reply or heavy page has run for PAUSE_SECONDS."""
    import threading
    from chatbot import batching

    monkeypatch.setattr(batching, "PAUSE_SECONDS", 0.05)
    monkeypatch.setattr(batching, "LONGEST_WAIT_SECONDS", 60)
    batcher = ReplyBatcher()
    started = threading.Event()
    worker = threading.Thread(target=batcher.run_in_background, args=(started.set,), daemon=True)
    with batching.foreground():
        worker.start()
        assert not started.wait(0.5)  # a reply or a page is running: the background waits
    assert started.wait(10)
    worker.join(10)


def test_background_work_still_moves_under_a_steady_load(monkeypatch):
    """Past LONGEST_WAIT_SECONDS without a pause, the background takes its
    step anyway: a server that is never idle still groups its questions."""
    import threading
    from chatbot import batching

    monkeypatch.setattr(batching, "PAUSE_SECONDS", 60)
    monkeypatch.setattr(batching, "LONGEST_WAIT_SECONDS", 0.2)
    started = threading.Event()
    with batching.foreground():
        worker = threading.Thread(target=ReplyBatcher().run_in_background, args=(started.set,), daemon=True)
        worker.start()
        assert started.wait(10)
        assert batching.wait_for_pause() is False
    worker.join(10)


def test_in_the_server_a_background_job_waits_on_its_own_thread_not_on_the_event_loop():
    """In a gevent process, as the server's worker: while a heavy page runs
    (a greenlet in ``foreground``), the background job waits with a real
    sleep on its OS thread, the event loop goes on (other greenlets tick),
    and the job runs after the page."""
    code = ("import gevent\nfrom chatbot import batching\n"
            "batching.PAUSE_SECONDS, batching.LONGEST_WAIT_SECONDS = 0.05, 60\n"
            "order = []\n"
            "def page():\n"
            "    with batching.foreground():\n"
            "        gevent.sleep(0.5)\n"
            "        order.append('page')\n"
            "pages = gevent.spawn(page)\n"
            "gevent.sleep(0)\n"
            "ticks = gevent.spawn(lambda: [gevent.sleep(0.02) or order.append('tick') for _ in range(10)])\n"
            "batching.ReplyBatcher().run_in_background(order.append, 'background')\n"
            "gevent.joinall([pages, ticks])\n"
            "print(order.index('page') < order.index('background'), order.count('tick'))")
    done = run_in_a_gevent_process(code)
    assert done.stdout.split() == ["True", "10"]
