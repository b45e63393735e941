"""What one client may use (chatbot/limits.py), through Flask's and
Flask-SocketIO's test clients: rates per chat session and per address that
outlive the connection, connects, history, request sizes and the busy answer.
The same limits against a real server, with raw sockets: tests/test_hostile.py."""
import io
import random
import threading

import pytest

from chatbot.limits import ClientLimits, Cooldowns, RateBuckets, RequestLimits
from chatbot.extensions import db, socketio
from helpers import ask, connect, rows, tiny_model, token_in


def connect_from(app, address):
    """A Socket.IO test client of a new chat whose requests come from ``address``."""
    flask_client = app.test_client()
    flask_client.environ_base["REMOTE_ADDR"] = address
    sock = socketio.test_client(app, flask_test_client=flask_client)
    if sock.is_connected():
        sock.get_received()  # its chat session's token
    return sock


def test_buckets_refill_and_never_hold_more_than_the_burst():
    now = [0.0]
    buckets = RateBuckets(2.0, 3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another key has its own bucket
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    now[0] = 100.0
    assert [buckets.take("a") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


def test_buckets_keep_at_most_max_keys():
    buckets = RateBuckets(1.0, 1, max_keys=3, clock=lambda: 0.0)
    for key in "abcd":
        assert buckets.take(key) == 0.0
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0  # forgotten (the oldest): a fresh bucket
    assert buckets.take("d") > 0  # still counted


def test_buckets_answer_as_token_buckets_under_random_use():
    """Against a plain token bucket per key (tokens, last time), 20,000
    random takes on 300 keys, time moving on in random steps."""
    rng = random.Random(7)
    now = [0.0]
    rate, burst = 1.5, 4
    buckets = RateBuckets(rate, burst, clock=lambda: now[0])
    reference = {}
    for _ in range(20_000):
        now[0] += rng.choice((0.0, 0.0, 0.001, 0.05, 0.3, 2.0))
        key = f"10.0.{rng.randrange(300)}.1"
        tokens, then = reference.get(key, (float(burst), now[0]))
        tokens = min(burst, tokens + (now[0] - then) * rate)
        expected = 0.0 if tokens >= 1 else (1 - tokens) / rate
        reference[key] = (tokens - 1 if tokens >= 1 else tokens, now[0])
        assert buckets.take(key) == pytest.approx(expected, abs=1e-6)


def test_buckets_that_filled_up_again_are_forgotten():
    """When the table next needs room: a flood's thousand addresses, once
    their buckets are full again, do not stay beside the next thousand."""
    now = [0.0]
    buckets = RateBuckets(1.0, 2, clock=lambda: now[0])
    for i in range(1000):
        buckets.take(f"127.77.{i // 250}.{i % 250}")
    assert (len(buckets), len(buckets._hashes)) == (1000, 2048)
    now[0] = 3.0  # every one of them full again
    for i in range(1000):
        buckets.take(f"10.1.{i // 250}.{i % 250}")
    assert (len(buckets), len(buckets._hashes)) == (1000, 2048)
    assert buckets.take("127.77.0.1") == 0.0 and buckets.take("127.77.0.1") == 0.0  # a full bucket again


def test_a_rate_of_zero_is_no_limit():
    buckets = RateBuckets(0, 1)
    assert [buckets.take("a") for _ in range(100)] == [0.0] * 100


def test_the_session_limit_survives_reconnects_and_new_handshakes(make_app):
    app = make_app(MESSAGE_RATE=0.01, MESSAGE_BURST=3)
    sock = connect(app)
    assert [ask(sock, f"질문 {i}")[0] for i in range(3)] == ["reply"] * 3
    assert ask(sock, "넷째")[1]["code"] == "rate_limited"
    # A Socket.IO disconnect and connect on the same socket (`41`, `40`) ...
    sock.disconnect()
    sock.connect(auth={"session": sock.token})
    assert [event["args"][0]["token"] for event in sock.get_received()] == [sock.token]
    assert ask(sock, "다시")[1]["code"] == "rate_limited"
    # ... or a new connection with the same chat session: the count goes on.
    again = connect(app, sock.token)
    assert ask(again, "또")[1]["code"] == "rate_limited"
    assert len(rows(app)) == 3


def test_the_address_limit_spans_sessions(make_app):
    app = make_app(MESSAGE_RATE=0, ADDRESS_MESSAGE_RATE=0.01, ADDRESS_MESSAGE_BURST=4)
    names = [ask(connect_from(app, "10.0.0.7"), "안녕")[0] for i in range(6)]
    assert names == ["reply"] * 4 + ["error"] * 2
    assert ask(connect_from(app, "10.0.0.8"), "안녕")[0] == "reply"  # another address
    assert len(rows(app)) == 5


def test_history_has_its_own_lower_limit(make_app):
    app = make_app(HISTORY_RATE=0.01, HISTORY_BURST=2)
    sock = connect(app)
    ask(sock, "안녕")
    answers = []
    for _ in range(3):
        sock.emit("history")
        [event] = sock.get_received()
        answers.append(event["name"] if event["name"] == "history" else event["args"][0]["code"])
    assert answers == ["history", "history", "rate_limited"]
    assert ask(sock, "메시지는 되나요")[0] == "reply"  # messages are not held back by it


def test_connects_per_address_are_limited(make_app):
    app = make_app(CONNECT_RATE=0.01, CONNECT_BURST=3)
    clients = [connect_from(app, "10.0.0.9") for i in range(4)]
    assert [c.is_connected() for c in clients] == [True, True, True, False]
    assert connect_from(app, "10.0.0.10").is_connected()


def test_engineio_handshakes_per_address_are_limited(make_app):
    app = make_app(CONNECT_RATE=0.01, CONNECT_BURST=2)
    client = app.test_client()
    codes = [client.get("/socket.io/?EIO=4&transport=polling").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.1.1.1"
    assert other.get("/socket.io/?EIO=4&transport=polling").status_code == 200


def test_engineio_handshakes_from_all_addresses_together_are_limited(make_app):
    app = make_app(HANDSHAKE_TOTAL_RATE=0.01, HANDSHAKE_TOTAL_BURST=3)
    codes = []
    for i in range(4):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.3.0.{i + 1}"
        codes.append(client.get("/socket.io/?EIO=4&transport=polling").status_code)
    assert codes == [200, 200, 200, 429]


def test_a_handshake_refused_by_one_bucket_is_counted_by_neither(make_app):
    """While everyone's handshakes are used up, an address's retries do not
    use up its own; and an address over its own limit takes nothing of
    everyone's."""
    app = make_app(HANDSHAKE_TOTAL_RATE=0.01, HANDSHAKE_TOTAL_BURST=2, CONNECT_RATE=0.01, CONNECT_BURST=2)
    limits = app.extensions["chatbot.limits"]
    retrying = [limits.handshake("10.4.0.1") for _ in range(5)]
    assert retrying[:2] == [0.0, 0.0] and min(retrying[2:]) > 0  # its own two went through, then its limit
    assert min(limits.handshake("10.4.0.2") for _ in range(3)) > 0  # everyone's two are used up
    assert limits.connect.wait("10.4.0.2") == 0.0  # and those refusals left this address its tokens
    limits.handshakes = type(limits.handshakes)(0.01, 5)  # everyone's bucket full again
    assert limits.handshake("10.4.0.1") > 0  # over its own limit
    assert limits.handshakes.wait("all") == 0.0 and len(limits.handshakes) == 0  # took nothing of everyone's


def test_waiting_counts_nothing():
    now = [0.0]
    buckets = RateBuckets(1.0, 2, clock=lambda: now[0])
    assert buckets.wait("a") == 0.0 and len(buckets) == 0
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.wait("a") == pytest.approx(1.0) and buckets.wait("a") == pytest.approx(1.0)
    now[0] = 1.0
    assert buckets.wait("a") == 0.0 and buckets.take("a") == 0.0 and buckets.take("a") > 0


def test_cooldowns_end_and_keep_at_most_max_keys():
    now = [0.0]
    cooldowns = Cooldowns(60, max_keys=2, clock=lambda: now[0])
    assert cooldowns.left("a") == 0.0
    assert cooldowns.start("a") == 60
    now[0] = 10.0
    assert cooldowns.left("a") == pytest.approx(50)
    cooldowns.start("b")
    cooldowns.start("c")  # a third: the oldest ("a") is forgotten
    assert (cooldowns.left("a"), cooldowns.left("c")) == (0.0, pytest.approx(60))
    now[0] = 71.0
    assert cooldowns.left("c") == 0.0  # over
    assert Cooldowns(0).start("a") == 0.0 and Cooldowns(0).left("a") == 0.0  # 0: never


def received(sock):
    """What came since the last call, even after the server disconnected it
    (the test client's get_received then refuses: what it has is its queue)."""
    if sock.is_connected():
        return sock.get_received()
    events, sock.queue = sock.queue, []
    return events


def flood_config(**config):
    return {"MESSAGE_RATE": 0.01, "MESSAGE_BURST": 2, "FLOOD_REFUSAL_RATE": 0.01, "FLOOD_REFUSAL_BURST": 3,
            "FLOOD_COOLDOWN_SECONDS": 60, "CONNECT_RATE": 1, "CONNECT_BURST": 20, **config}


def test_a_socket_that_keeps_flooding_is_disconnected_and_its_address_cools_down(make_app):
    """Refusing a flood packet by packet took the whole event loop on a slow
    machine: past FLOOD_REFUSAL_BURST refusals the socket is closed, and its
    address is refused (rate_limited, retry_after) for the cool-down."""
    app = make_app(**flood_config())
    sock = connect_from(app, "10.9.0.1")
    answers = []
    for i in range(8):
        sock.emit("message", {"text": f"질문 {i}"})
        answers += [(e["name"], e["args"][0].get("code") if e["name"] == "error" else None)
                    for e in received(sock)]
        if not sock.is_connected():
            break
    # two replies (the burst), three refusals, then the last one with the cool-down, and the socket is closed
    assert answers == [("reply", None)] * 2 + [("error", "rate_limited")] * 4
    assert not sock.is_connected() and i == 5
    assert len(rows(app)) == 2
    # the address is cooling down: no connect, no Engine.IO handshake
    assert not connect_from(app, "10.9.0.1").is_connected()
    http = app.test_client()
    http.environ_base["REMOTE_ADDR"] = "10.9.0.1"
    handshake = http.get("/socket.io/?EIO=4&transport=polling")
    assert handshake.status_code == 429 and 55 <= int(handshake.headers["Retry-After"]) <= 60
    # everyone else chats as before
    other = connect_from(app, "10.9.0.2")
    assert other.is_connected() and ask(other, "안녕")[0] == "reply"


def test_the_last_refusal_says_how_long_the_cool_down_lasts(make_app):
    app = make_app(**flood_config(FLOOD_REFUSAL_BURST=1, MESSAGE_RATE=0.5))
    sock = connect_from(app, "10.9.1.1")
    for i in range(4):
        sock.emit("message", {"text": f"질문 {i}"})
    errors = [e["args"][0] for e in received(sock) if e["name"] == "error"]
    assert [e["retry_after"] for e in errors] == [pytest.approx(2, abs=0.1), 60]  # the message limit's, the cool-down
    assert not sock.is_connected()


def test_connects_over_the_limit_count_towards_the_cool_down(make_app):
    app = make_app(**flood_config(CONNECT_RATE=0.01, CONNECT_BURST=2, FLOOD_REFUSAL_BURST=2))
    clients = [connect_from(app, "10.9.2.1") for i in range(5)]
    assert [c.is_connected() for c in clients] == [True, True, False, False, False]
    limits = app.extensions["chatbot.limits"]
    assert limits.cooldown.left("10.9.2.1") == pytest.approx(60, abs=1)  # the third refusal started it
    assert limits.cooldown.left("10.9.2.2") == 0.0


def test_busy_is_answered_and_nothing_is_stored(app, monkeypatch):
    from chatbot.batching import Busy

    def full(*args, **kwargs):
        raise Busy()

    monkeypatch.setattr(app.extensions["chatbot.responder"]._batcher, "answer", full)
    tiny_model(app.config["MODEL_DIR"])
    name, error = ask(connect(app), "안녕")
    assert (name, error["code"]) == ("error", "busy")
    assert "잠시 후" in error["message"]
    assert rows(app) == []


def test_no_database_connection_is_held_while_the_model_answers(app, monkeypatch):
    tiny_model(app.config["MODEL_DIR"])
    batcher = app.extensions["chatbot.responder"]._batcher
    answer = batcher.answer
    checked_out = []

    def watched(bot, text, *reviewed):
        checked_out.append(db.engine.pool.checkedout())
        return answer(bot, text, *reviewed)

    monkeypatch.setattr(batcher, "answer", watched)
    assert ask(connect(app), "날씨 어때")[0] == "reply"
    assert checked_out == [0]


def test_http_requests_per_address_are_limited(make_app):
    app = make_app(HTTP_LIMIT="3/minute")
    client = app.test_client()
    assert [client.get("/").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert client.get("/static/chat.js").status_code == 200  # static files are not counted
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.2.2.2"
    assert other.get("/").status_code == 200


class Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def read(self, *args):
        raise AssertionError("the body was read")

    readinto = readline = read


def test_a_large_body_is_refused_before_it_is_read(app):
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    for path in ("/login", "/admin/queue/import", "/socket.io/?EIO=4&transport=polling&sid=x"):
        for size in (app.config["MAX_REQUEST_BYTES"] + 1, app.config["MAX_UPLOAD_BYTES"] + 10**6, 2**30):
            environ = EnvironBuilder(path=path, method="POST", content_type="multipart/form-data; boundary=x").get_environ()
            environ.update({"wsgi.input": Unreadable(), "CONTENT_LENGTH": str(size)})
            _, status, _ = run_wsgi_app(app, environ, buffered=True)
            assert status.startswith("413"), (path, size, status)


def test_only_a_reviewer_may_upload_a_large_csv(app, logged_in):
    body = "Q,A\n" + "".join(f"질문 {i},답 {i}\n" for i in range(4000))  # ~70 KB, over MAX_REQUEST_BYTES
    assert len(body.encode()) > app.config["MAX_REQUEST_BYTES"]
    anonymous = app.test_client()
    refused = anonymous.post("/admin/queue/import", data={"file": (io.BytesIO(body.encode()), "pairs.csv")})
    assert refused.status_code == 413
    page = logged_in.get("/admin/").get_data(as_text=True)
    accepted = logged_in.post("/admin/queue/import", data={"file": (io.BytesIO(body.encode()), "pairs.csv"),
                                                           "csrf_token": token_in(page)})
    assert accepted.status_code == 302
    assert len(rows(app)) == 4000


def test_a_chunked_upload_is_refused(app):
    response = app.test_client().post("/login", data=b"x", headers={"Transfer-Encoding": "chunked"})
    assert response.status_code == 411


def test_open_requests_per_forwarded_address_are_capped():
    """Behind a proxy the worker sees only the proxy; the middleware counts
    the client's address (after ProxyFix) instead."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_app(environ, start_response):  # a WebSocket, say: open until released
        entered.release()
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    config = {"MESSAGE_RATE": 0, "MESSAGE_BURST": 1, "ADDRESS_MESSAGE_RATE": 0, "ADDRESS_MESSAGE_BURST": 1,
              "HISTORY_RATE": 0, "HISTORY_BURST": 1, "CONNECT_RATE": 0, "CONNECT_BURST": 1,
              "HANDSHAKE_TOTAL_RATE": 0, "HANDSHAKE_TOTAL_BURST": 1, "FLOOD_REFUSAL_RATE": 0,
              "FLOOD_REFUSAL_BURST": 1, "FLOOD_COOLDOWN_SECONDS": 0}
    middleware = RequestLimits(slow_app, ClientLimits(config), max_body=1000, body_timeout=5, per_address=2)
    statuses = []

    def call(address):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": address}
        middleware(environ, lambda status, headers: statuses.append((address, status)))

    threads = [threading.Thread(target=call, args=("10.0.0.1",)) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in threads:
        assert entered.acquire(timeout=5)
    call("10.0.0.1")  # a third at once: refused
    assert statuses == [("10.0.0.1", "429 Too Many Requests")]
    release.set()
    for t in threads:
        t.join(5)
    assert sorted(statuses)[:2] == [("10.0.0.1", "200 OK")] * 2
    assert middleware.open.by_address == {}  # every request counted out again
    call("10.0.0.1")
    assert statuses[-1] == ("10.0.0.1", "200 OK")
