"""A slow reply never holds up other chats (real server, real clients)."""
import threading
import time

import socketio as socketio_client
from werkzeug.serving import make_server

from chatbot.responder import Answer


def test_other_sockets_are_served_while_one_reply_is_computed(app, monkeypatch):
    responder = app.extensions["chatbot.responder"]
    real_answer = responder.answer
    slow_started = threading.Event()

    def answer(question, key=None):
        if question == "느린 질문":
            slow_started.set()
            time.sleep(2.0)  # stands in for a long model computation
            return Answer("느린 답", "model", None)
        return real_answer(question, key)

    monkeypatch.setattr(responder, "answer", answer)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    arrivals, clients = [], []
    try:
        for name in ("slow", "fast"):
            client = socketio_client.Client(reconnection=False)
            client.on("reply", lambda data, name=name: arrivals.append((name, time.monotonic())))
            client.connect(url, transports=["websocket"], wait_timeout=10)
            clients.append(client)
        start = time.monotonic()
        clients[0].emit("message", {"text": "느린 질문"})
        assert slow_started.wait(5)
        clients[1].emit("message", {"text": "안녕"})
        deadline = time.monotonic() + 10
        while len(arrivals) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for client in clients:
            client.disconnect()
        server.shutdown()
    assert [name for name, _ in arrivals] == ["fast", "slow"]
    assert arrivals[0][1] - start < 1.5  # the fast reply did not wait for the slow one
