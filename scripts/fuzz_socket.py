#!/usr/bin/env python3
"""Send malformed Socket.IO traffic to a running 한마디 server and check that it
shrugs it off.

    python scripts/fuzz_socket.py http://127.0.0.1:5000 [--events 1000]

What it sends, over many connections at once:

- bad ``message`` events: wrong types (numbers, booleans, lists, nested
  objects, binary, several arguments, nothing), empty and blank text, text
  over the length limit, lone surrogates, control characters and NULs;
- bad ``feedback`` events, and events with unknown names;
- raw frames written straight to a WebSocket: JSON that does not parse or
  nests thousands deep, event names that are not strings, reserved names
  (``connect``, ``disconnect``) sent as events, absurd attachment counts,
  empty and unknown packets, stray binary frames;
- floods: bursts of events with no pause at all (the server's rate limit
  answers them with ``rate_limited``), of bad and of well-formed messages;
- frames the server must refuse by closing the connection (bigger than its
  payload limit; not Engine.IO packets) and bad long-polling HTTP requests.

Every bad event must be answered with an ``error`` event; every well-formed
message with a ``reply`` or, in a flood, ``rate_limited``.  Afterwards the
server must still serve the page and answer a new chat, and the rows stored
for the fuzz's chat sessions (read back through the ``history`` event) must
be exactly the well-formed messages it answered.

Prints the counts as one JSON object, then a summary line; exits 1 if any
check failed.  Needs python-socketio[client] and websocket-client
(requirements-test.txt).
"""
import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

import socketio
import websocket

# -- what to send ------------------------------------------------------------------


def bad_messages(max_chars):
    """(label, args) for ``message`` events that must each get one ``error``."""
    deep_dict = "x"
    for _ in range(60):
        deep_dict = {"text": deep_dict}
    deep_list = ["x"]
    for _ in range(400):
        deep_list = [deep_list]
    return [
        ("int", (42,)), ("float", (12.5,)), ("bool", (True,)), ("null", (None,)), ("nothing", ()),
        ("list", (["안녕"],)), ("empty list", ([],)), ("empty dict", ({},)), ("no text key", ({"wrong": "안녕"},)),
        ("text int", ({"text": 42},)), ("text null", ({"text": None},)), ("text list", ({"text": ["안녕"]},)),
        ("text dict", ({"text": {"text": "안녕"}},)), ("text bool", ({"text": False},)),
        ("nested dict", (deep_dict,)), ("nested list", ({"text": deep_list},)),
        ("binary", (b"\xff\xfe\x00",)), ("binary text", ({"text": b"hello"},)),
        ("two args", ("안녕", "하세요")), ("three args", ({"text": "a"}, {"text": "b"}, None)),
        ("empty", ("",)), ("empty text", ({"text": ""},)), ("blank", ({"text": " \n\t\r "},)),
        ("ideographic space", ({"text": "\u3000\u3000"},)),
        ("too long", ({"text": "가" * (max_chars + 1)},)), ("too long ascii", ({"text": "a" * (max_chars * 4)},)),
        ("too long bare", ("나" * (max_chars * 2),)),
        ("lone high surrogate", ({"text": "안녕\ud800"},)), ("lone low surrogate", ({"text": "\udfff"},)),
        ("half emoji", ("\ud83d",)), ("reversed pair", ({"text": "\ude00\ud83d"},)),
        ("nul", ({"text": "안\x00녕"},)), ("bell", ({"text": "\x07"},)), ("escape", ({"text": "\x1b[31m빨강"},)),
        ("del", ({"text": "a\x7fb"},)), ("nul only", ("\x00",)),
    ]


def bad_feedback():
    return [
        ("feedback nothing", ()), ("feedback string", ("down",)), ("feedback no value", ({"id": 1},)),
        ("feedback id string", ({"id": "1", "value": "down"},)), ("feedback id bool", ({"id": True, "value": "up"},)),
        ("feedback id float", ({"id": 1.5, "value": "up"},)), ("feedback id huge", ({"id": 2**80, "value": "up"},)),
        ("feedback id negative", ({"id": -5, "value": "down"},)), ("feedback bad value", ({"id": 1, "value": "meh"},)),
        ("feedback value list", ({"id": 1, "value": ["down"]},)), ("feedback unknown big id", ({"id": 2**62, "value": "down"},)),
        ("feedback no such row", ({"id": 987654321, "value": "down"},)), ("feedback null", (None,)),
    ]


UNKNOWN_EVENTS = ["hack", "reply", "error", "history2", "admin", "x" * 300, "😀", "메시지", "message ", "MESSAGE", "*"]

# Socket.IO packets written raw to a WebSocket (after the "4" of Engine.IO).
RAW_BAD = [
    ("cut JSON", '42["message",{"text":'),
    ("deep JSON", "42" + "[" * 3000 + "]" * 3000),
    ("not a list", '42{"text":"안녕"}'),
    ("no event name", "42[]"),
    ("number name", '42[123,"안녕"]'),
    ("null name", "42[null]"),
    ("string body", '42"message"'),
    ("fake connect", '42["connect",{},{"session":"someone-elses-session"}]'),
    ("fake disconnect", '42["disconnect","client namespace disconnect"]'),
    ("fake connect_error", '42["connect_error",{}]'),
    ("absurd ack id", "42" + "7" * 120 + '["message","x"]'),
    ("absurd attachments", '4599999-["message",{"_placeholder":true,"num":0}]'),
    ("connect_error packet", '44{"message":"x"}'),
    ("unknown packet type", "49garbage"),
    ("not a packet", "4x"),
    ("empty packet", "4"),
    ("placeholder nowhere", '451-["message",{"_placeholder":true,"num":9}]', b"\x00"),
    ("stray binary", None, b"\x01\x02\x03"),
]


def valid_text(rng):
    return rng.choice(["안녕하세요", "배고파", "날씨 어때", "심심해", "고마워", "너 누구야"]) + f" #{rng.randrange(10**6)}"


# -- bookkeeping --------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.bad_sent = 0
        self.valid_sent = 0
        self.errors = 0
        self.replies = 0
        self.codes = Counter()
        self.labels = Counter()
        self.closed_as_expected = Counter()
        self.not_closed = Counter()
        self.http = Counter()
        self.problems = []
        self.answered_questions = {}  # session name -> set of questions that got a reply
        self.tokens = {}  # session name -> the token of its chat session (chatbot/chat.py)

    def add(self, **counts):
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def problem(self, text):
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text)


class Pacer:
    """Client-side token bucket, a little under the server's limit."""

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def wait(self):
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            time.sleep((1 - self.tokens) / self.rate)


class Conn:
    """A python-socketio client of the chat session named ``session``: the
    first connection of a name starts a chat, later ones come back to it with
    the token the server sent the first."""

    def __init__(self, url, session, tally):
        self.session, self.tally = session, tally
        self.errors, self.replies, self.history, self.token = [], [], None, None
        self.got = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("session", self._on_session)
        self.sio.on("error", self._on_error)
        self.sio.on("reply", self._on_reply)
        self.sio.on("history", self._on_history)
        with tally.lock:
            token = tally.tokens.get(session)
        self.sio.connect(url, transports=["websocket"], auth={"session": token} if token else {}, wait_timeout=15)
        if not self.wait_for(lambda: self.token is not None, 15):
            self.close()
            raise RuntimeError("no session token")
        with tally.lock:
            tally.tokens.setdefault(session, self.token)

    def _on_session(self, data=None, *rest):
        self.token = data.get("token") if isinstance(data, dict) else None
        self._notify()

    def _notify(self):
        with self.got:
            self.got.notify_all()

    def _on_error(self, data=None, *rest):
        self.errors.append(data)
        self._notify()

    def _on_reply(self, data=None, *rest):
        self.replies.append(data)
        self._notify()

    def _on_history(self, data=None, *rest):
        self.history = data
        self._notify()

    def emit(self, event, args):
        self.sio.emit(event, args if len(args) != 1 else args[0]) if args else self.sio.emit(event)

    def wait_for(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        with self.got:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.got.wait(left)
        return True

    def close(self):
        try:
            self.sio.disconnect()
        except Exception:
            pass


# -- phases -------------------------------------------------------------------------


def paced_worker(url, session, plan, rate, burst, tally, answer_timeout):
    """Send ``plan`` [(kind, label, event, args)] at a pace the server allows."""
    try:
        conn = Conn(url, session, tally)
    except Exception as exc:
        tally.problem(f"{session}: could not connect: {exc}")
        return
    pacer = Pacer(rate, burst)
    bad = valid = 0
    valid_texts = []
    for kind, label, event, args in plan:
        pacer.wait()
        try:
            conn.emit(event, args)
        except Exception as exc:
            tally.problem(f"{session}: emit {label} failed: {exc}")
            continue
        tally.add(sent=1)
        if kind == "bad":
            bad += 1
            tally.labels[label] += 1
        else:
            valid += 1
            valid_texts.append(args[0]["text"])
    tally.add(bad_sent=bad, valid_sent=valid)
    done = conn.wait_for(lambda: len(conn.errors) >= bad and len(conn.replies) >= valid, answer_timeout)
    time.sleep(0.3)  # anything extra would show up now
    record(conn, tally, bad, valid, done)
    conn.close()


def record(conn, tally, bad, valid, done):
    codes = Counter((e or {}).get("code") if isinstance(e, dict) else repr(e) for e in conn.errors)
    with tally.lock:
        tally.codes.update(codes)
        tally.errors += len(conn.errors)
        tally.replies += len(conn.replies)
        tally.answered_questions.setdefault(conn.session, set()).update(
            r.get("question") for r in conn.replies if isinstance(r, dict))
    limited = codes.get("rate_limited", 0)
    if not done or len(conn.errors) + len(conn.replies) != bad + valid:
        tally.problem(f"{conn.session}: sent {bad} bad + {valid} good, got {len(conn.errors)} errors "
                      f"({dict(codes)}) + {len(conn.replies)} replies")
    elif len(conn.replies) + limited < valid:
        tally.problem(f"{conn.session}: {valid} good messages, only {len(conn.replies)} replies")


def flood(url, session, events, tally, answer_timeout):
    """Everything at once on one connection: the rate limit answers the rest."""
    try:
        conn = Conn(url, session, tally)
    except Exception as exc:
        tally.problem(f"{session}: could not connect: {exc}")
        return
    bad = valid = 0
    for kind, event, args in events:
        conn.emit(event, args)
        if kind == "bad":
            bad += 1
            tally.labels["flood"] += 1
        else:
            valid += 1
    tally.add(sent=bad + valid, bad_sent=bad, valid_sent=valid)
    done = conn.wait_for(lambda: len(conn.errors) + len(conn.replies) >= bad + valid, answer_timeout)
    time.sleep(0.3)
    record(conn, tally, bad, valid, done)
    if not any((e or {}).get("code") == "rate_limited" for e in conn.errors if isinstance(e, dict)):
        tally.problem(f"{session}: a flood of {bad + valid} events was never rate limited")
    conn.close()


def ws_url(url):
    return url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + \
        "/socket.io/?EIO=4&transport=websocket"


def raw_open(url, session, timeout=10):
    ws = websocket.create_connection(ws_url(url), timeout=timeout)
    opening = ws.recv()
    if not (isinstance(opening, str) and opening.startswith("0")):
        raise RuntimeError(f"unexpected Engine.IO open packet {opening!r}")
    ws.send("40" + json.dumps({"session": session}))
    while True:
        frame = ws.recv()
        if isinstance(frame, str) and frame.startswith("40"):
            return ws
        if isinstance(frame, str) and frame.startswith("44"):
            raise RuntimeError(f"connect refused: {frame}")


def raw_frames(url, session, rounds, rate, burst, tally, answer_timeout):
    """Malformed packets on a WebSocket; each must get an error event."""
    try:
        ws = raw_open(url, session)
    except Exception as exc:
        tally.problem(f"{session}: raw connect failed: {exc}")
        return
    pacer = Pacer(rate, burst)
    expected = 0
    for _ in range(rounds):
        for item in RAW_BAD:
            label, text = item[0], item[1]
            binaries = item[2:] if len(item) > 2 else ()
            pacer.wait()
            if text is not None:
                ws.send(text)
                tally.add(sent=1)
            for blob in binaries:
                ws.send_binary(blob)
                tally.add(sent=1)
            # a placeholder packet waits for its attachment: one error for the pair;
            # "stray binary" is a lone binary frame: one error
            expected += 1
            tally.labels["raw: " + label] += 1
    tally.add(bad_sent=expected)
    errors, codes = 0, Counter()
    deadline = time.monotonic() + answer_timeout
    ws.settimeout(0.5)
    while errors < expected and time.monotonic() < deadline:
        try:
            frame = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except Exception as exc:
            tally.problem(f"{session}: raw connection dropped after {errors} errors: {exc}")
            break
        if frame == "2":  # Engine.IO ping
            ws.send("3")
        elif isinstance(frame, str) and frame.startswith('42["error"'):
            errors += 1
            codes[json.loads(frame[2:])[1].get("code")] += 1
    with tally.lock:
        tally.errors += errors
        tally.codes.update(codes)
    if errors != expected:
        tally.problem(f"{session}: {expected} raw bad packets, {errors} errors ({dict(codes)})")
    ws.close()


def must_close(url, session, label, frame, tally):
    """A frame the server must refuse by closing the connection."""
    try:
        ws = raw_open(url, session)
    except Exception as exc:
        tally.problem(f"{label}: raw connect failed: {exc}")
        return
    try:
        ws.send(frame) if isinstance(frame, str) else ws.send_binary(frame)
        tally.add(sent=1)
        ws.settimeout(10)
        while True:
            reply = ws.recv()
            if reply in ("", None) or (isinstance(reply, str) and reply.startswith("41")):
                break
            if reply == "2":
                ws.send("3")
                continue
            if isinstance(reply, str) and reply.startswith('42["error"'):
                tally.not_closed[label] += 1
                return
        tally.closed_as_expected[label] += 1
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        tally.closed_as_expected[label] += 1
    except websocket.WebSocketTimeoutException:
        tally.not_closed[label] += 1
        tally.problem(f"{label}: the server neither closed the connection nor answered")
    finally:
        try:
            ws.close()
        except Exception:
            pass


def http_status(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return f"error: {exc.__class__.__name__}"


def polling_session(base):
    with urllib.request.urlopen(base + "?EIO=4&transport=polling", timeout=15) as response:
        return json.loads(response.read().decode()[1:])["sid"]


def bad_http(url, max_bytes, tally):
    """Long-polling requests the server must refuse quickly (4xx), not crash or hang on."""
    base = url.rstrip("/") + "/socket.io/"
    cases = [
        ("unsupported protocol", "GET", base + "?EIO=2&transport=polling", None, False),
        ("unknown transport", "GET", base + "?EIO=4&transport=carrier-pigeon", None, False),
        ("unknown session", "GET", base + "?EIO=4&transport=polling&sid=nope", None, False),
        ("post to unknown session", "POST", base + "?EIO=4&transport=polling&sid=nope", b'42["message","x"]', False),
        # each on a session of its own, opened just for it
        ("body over the payload limit", "POST", base, b"4" + b"a" * (max_bytes + 1024), True),
        ("huge body", "POST", base, b"4" + b"a" * (50 * max_bytes), True),
        ("garbage body", "POST", base, b"\xff\xfe\x00garbage", True),
        ("undecodable packet", "POST", base, b"4" + b"[" * 3000, True),
    ]
    for label, method, target, body, own_session in cases:
        if own_session:
            try:
                target = base + f"?EIO=4&transport=polling&sid={polling_session(base)}"
            except Exception as exc:
                tally.problem(f"HTTP {label}: polling handshake failed: {exc}")
                continue
        status = http_status(method, target, body, {"Content-Type": "text/plain;charset=UTF-8"})
        tally.add(sent=1)
        tally.http[f"{label}: {status}"] += 1
        if not (isinstance(status, int) and 400 <= status < 500):
            tally.problem(f"HTTP {label}: expected a 4xx, got {status}")


def server_alive(url):
    return http_status("GET", url.rstrip("/") + "/") == 200


def answers_after(url, tally, timeout):
    try:
        conn = Conn(url, "fuzz-after-" + uuid.uuid4().hex[:12], tally)
    except Exception as exc:
        tally.problem(f"after the fuzz: cannot connect: {exc}")
        return False
    conn.emit("message", ({"text": "안녕하세요"},))
    ok = conn.wait_for(lambda: conn.replies or conn.errors, timeout) and bool(conn.replies)
    if not ok:
        tally.problem(f"after the fuzz: no reply ({conn.errors})")
    conn.close()
    return ok


def stored_rows(url, sessions, tally, timeout):
    """Rows stored under the fuzz's chat sessions, read back with ``history``."""
    total, garbage = 0, 0
    for session in sessions:
        try:
            conn = Conn(url, session, tally)
        except Exception as exc:
            tally.problem(f"history of {session}: cannot connect: {exc}")
            continue
        if conn.token != tally.tokens.get(session):
            tally.problem(f"history of {session}: the server did not take its token back")
        conn.emit("history", ())
        if not conn.wait_for(lambda: conn.history is not None, timeout):
            tally.problem(f"history of {session}: no answer")
            conn.close()
            continue
        exchanges = conn.history.get("exchanges", [])
        answered = tally.answered_questions.get(session, set())
        total += len(exchanges)
        bad = [x.get("question") for x in exchanges if x.get("question") not in answered]
        garbage += len(bad)
        if bad:
            tally.problem(f"{session}: stored rows nobody got a reply for: {bad[:3]}")
        conn.close()
    return total, garbage


# -- main ---------------------------------------------------------------------------


def build_plans(connections, events, max_chars, rng, run):
    """Spread the paced events over the connections: mostly bad, a few good."""
    pool = [("bad", label, "message", args) for label, args in bad_messages(max_chars)]
    pool += [("bad", label, "feedback", args) for label, args in bad_feedback()]
    pool += [("bad", "unknown event", name, ({"text": "안녕"},)) for name in UNKNOWN_EVENTS]
    plans = [[] for _ in range(connections)]
    for i in range(events):
        plan = plans[i % connections]
        if i % 40 == 7:  # one well-formed message in 40
            plan.append(("good", "valid", "message", ({"text": valid_text(rng)},)))
        else:
            plan.append(pool[i % len(pool)] if i < len(pool) else rng.choice(pool))
    sessions = [f"fuzz-{run}-{n:03d}" for n in range(connections)]
    return list(zip(sessions, plans))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--events", type=int, default=1000, help="paced Socket.IO events (default 1000)")
    parser.add_argument("--connections", type=int, default=20, help="connections for the paced events")
    parser.add_argument("--rate", type=float, default=4.0,
                        help="events/s per connection, under the server's MESSAGE_RATE (default 4)")
    parser.add_argument("--burst", type=int, default=8, help="burst per connection, under MESSAGE_BURST")
    parser.add_argument("--max-chars", type=int, default=500, help="the server's MAX_MESSAGE_CHARS")
    parser.add_argument("--raw-rounds", type=int, default=3, help="rounds of raw malformed packets")
    parser.add_argument("--flood", type=int, default=150, help="events in each no-pause flood")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for answers")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    url = args.url.rstrip("/")
    rng = random.Random(args.seed)
    run = uuid.uuid4().hex[:8]
    tally = Tally()
    started = time.monotonic()
    if not server_alive(url):
        print(json.dumps({"url": url, "server_alive": False, "error": "server not reachable"}))
        print(f"fuzz: {url} is not reachable")
        return 1
    max_bytes = 16 * args.max_chars + 1024  # the server's max_http_buffer_size

    plans = build_plans(args.connections, args.events, args.max_chars, rng, run)
    sessions = [session for session, _ in plans]
    threads = [threading.Thread(target=paced_worker, args=(url, s, p, args.rate, args.burst, tally, args.timeout))
               for s, p in plans]
    for r in range(2):
        session = f"fuzz-{run}-raw{r}"
        threads.append(threading.Thread(target=raw_frames, args=(
            url, session, args.raw_rounds, args.rate, args.burst, tally, args.timeout)))
    bad_flood = [("bad", "message", ({"text": ""},)) for _ in range(args.flood)]
    good_flood = [("good", "message", ({"text": valid_text(rng)},)) for _ in range(max(10, args.flood // 5))]
    for name, events in (("flood-bad", bad_flood), ("flood-good", good_flood)):
        session = f"fuzz-{run}-{name}"
        sessions.append(session)
        threads.append(threading.Thread(target=flood, args=(url, session, events, tally, args.timeout)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    closers = [
        ("frame over the payload limit", '42["message",{"text":"' + "가" * max_bytes + '"}]'),
        ("binary frame over the limit", b"\x00" * (max_bytes + 16)),
        ("not an Engine.IO packet", "hello"),
        ("base64 garbage", "b%%%"),
        ("Engine.IO message nested too deep", "4" + "[" * 5000),
    ]
    for label, frame in closers:
        must_close(url, f"fuzz-{run}-close", label, frame, tally)
    bad_http(url, max_bytes, tally)

    alive = server_alive(url)
    after = alive and answers_after(url, tally, args.timeout)
    rows, garbage = stored_rows(url, sessions, tally, args.timeout) if alive else (None, None)
    unanswered = max(0, tally.bad_sent + tally.valid_sent - tally.errors - tally.replies)
    result = {
        "url": url,
        "sent": tally.sent,
        "bad_events_sent": tally.bad_sent,
        "valid_messages_sent": tally.valid_sent,
        "errors_answered": tally.errors,
        "replies": tally.replies,
        "unanswered": unanswered,
        "error_codes": dict(sorted(tally.codes.items(), key=lambda kv: str(kv[0]))),
        "closed_as_expected": dict(tally.closed_as_expected),
        "not_closed": dict(tally.not_closed),
        "http": dict(tally.http),
        "server_alive": alive,
        "answers_after": after,
        "rows_stored": rows,
        "garbage_rows": garbage,
        "session_ids": sorted(token.split(".")[0] for token in tally.tokens.values()),
        "problems": tally.problems,
        "duration_s": round(time.monotonic() - started, 1),
    }
    ok = (alive and after and unanswered == 0 and not tally.problems and garbage == 0
          and rows == tally.replies and not tally.not_closed)
    result["ok"] = ok
    print(json.dumps(result, ensure_ascii=False, indent=1))
    print(f"fuzz: sent {tally.sent} events ({tally.bad_sent} bad, {tally.valid_sent} well-formed); "
          f"{tally.errors} errors answered, {unanswered} unanswered; {tally.replies} replies; "
          f"server alive: {'yes' if alive else 'NO'}; answers afterwards: {'yes' if after else 'NO'}; "
          f"rows stored: {rows} ({garbage} garbage); {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
