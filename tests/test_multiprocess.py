"""Two server processes on Redis and PostgreSQL (docs/deployment.md), as CI runs it.

The test starts its own redis-server and PostgreSQL on 127.0.0.1 (installing
the Debian packages first when missing, as root: tests/services.py), migrates
PostgreSQL with ``flask db upgrade``, and runs two gunicorn processes on two
ports sharing the database, the message queue, MODEL_DIR and SECRET_KEY.
Clients on both chat; a model activation reaches both processes; one process
is killed and its clients reconnect to the other (what a load balancer does)
with nothing lost: every answered message is a row in PostgreSQL, and the
messages sent after the reconnect are answered and stored too.
"""
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import sqlalchemy as sa

import services
from helpers import skill_payload, tiny_model
from live_server import ROOT, LiveServer

pytestmark = pytest.mark.multiprocess

QUESTIONS = ["안녕하세요", "배고파", "날씨 어때", "심심해", "고마워", "너 누구야"]


class Chat:
    """A python-socketio client whose events land in a queue; it reconnects
    only when told to, and to the URL it is given (the load balancer's job)."""

    def __init__(self, name):
        import socketio

        self.name = name
        self.token = None  # its chat session's, from the first server it connects to
        self.events = queue.Queue()
        self.client = socketio.Client(reconnection=False)
        for event in ("session", "reply", "history", "model", "error", "announcement"):
            self.client.on(event, self._recorder(event))
        self.url = None

    def _recorder(self, event):
        return lambda data=None: self.events.put((event, data))

    def connect(self, url, **options):
        """Connect to ``url``, coming back to its chat session if it has one."""
        self.url = url
        self.client.connect(url, auth={"session": self.token} if self.token else {},
                            **{"transports": ["websocket"], "wait_timeout": 10, **options})
        token = self.wait("session")["token"]
        assert self.token in (None, token), "the chat session changed"
        self.token = token
        return self

    @property
    def session_id(self):
        return self.token.split(".")[0]

    def wait(self, event, timeout=30, match=lambda data: True):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} ({self.url}): no {event!r} in {timeout}s")
            try:
                name, data = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if name == "error":
                raise AssertionError(f"{self.name}: error {data}")
            if name == event and match(data):
                return data

    def ask(self, text):
        self.client.emit("message", {"text": text})
        reply = self.wait("reply", match=lambda data: data["question"] == text)
        assert reply["answer"] and reply["id"], reply
        return reply

    def close(self):
        try:
            self.client.disconnect()
        except Exception:
            pass


def flask_cli(*args, env):
    run = subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def backends():
    services.ensure_installed()
    workdir = tempfile.mkdtemp(prefix="chatbot-redis-")
    redis = services.Redis(workdir).start()
    postgres = services.Postgres(workdir)
    try:
        postgres.start()
        yield redis, postgres
    finally:
        postgres.stop()
        redis.stop()


def test_two_processes_share_events_models_and_the_database(tmp_path, backends):
    redis, postgres = backends
    from chatbot import versions

    models = tmp_path / "models"
    first = tiny_model(models).name
    second = tiny_model(models).name
    versions.activate(models, first)

    env = {"DATABASE_URL": postgres.url,  # the usual postgresql:// URL: config picks psycopg 3
           "SOCKETIO_MESSAGE_QUEUE": redis.url, "MODEL_DIR": str(models), "SECRET_KEY": "shared-secret",
           "MODEL_WATCH_SECONDS": "0.5", "REPLY_WORKERS": "1"}
    flask_cli("db", "upgrade", env={**os.environ, **env})

    servers = [LiveServer(tmp_path / name, env=env) for name in ("a", "b")]
    for server in servers:
        server.workdir.mkdir()
    chats = []
    try:
        for server in servers:
            server.start()
        a, b = servers
        chats = [Chat(f"{s}{i}").connect(server.url) for s, server in (("a", a), ("b", b)) for i in range(2)]
        sessions = {chat.name: chat.session_id for chat in chats}
        answered = []  # every reply any client got

        # clients on both processes chat, on the first model
        for chat in chats:
            for text in QUESTIONS[:2]:
                reply = chat.ask(f"{text} #{chat.name}")
                assert reply["model_version"] == first, reply
                answered.append(reply)

        # the message queue joins the processes: one emit reaches the clients of both
        from flask_socketio import SocketIO
        SocketIO(message_queue=redis.url).emit("announcement", {"text": "hello"})
        for chat in chats:
            assert chat.wait("announcement", timeout=15) == {"text": "hello"}

        # an activation (here as the training job or `versions.activate` does it:
        # move `current` in the shared MODEL_DIR) reaches both processes
        versions.activate(models, second)
        for chat in chats:
            assert chat.wait("model", timeout=20) == {"version": second}
        for chat in chats:
            reply = chat.ask(f"{QUESTIONS[2]} #{chat.name}")
            assert reply["model_version"] == second, reply
            answered.append(reply)

        # kill server a (gunicorn's master and its worker, as a crash would);
        # its clients reconnect to b (same chat session) and lose nothing
        kill_server(a)
        moved = [chat for chat in chats if chat.url == a.url]
        deadline = time.monotonic() + 15
        while any(chat.client.connected for chat in moved) and time.monotonic() < deadline:
            time.sleep(0.1)
        for chat in moved:
            assert not chat.client.connected
            chat.close()
            chat.connect(b.url)
            chat.client.emit("history")
            history = chat.wait("history")["exchanges"]
            mine = [r["id"] for r in answered if r["question"].endswith(f"#{chat.name}")]
            assert [row["id"] for row in history] == mine
        for chat in chats:
            for text in QUESTIONS[3:]:
                reply = chat.ask(f"{text} #{chat.name}")
                assert reply["model_version"] == second
                answered.append(reply)
        assert b.alive()
    finally:
        for chat in chats:
            chat.close()
        for server in servers:
            server.stop()

    # every answered message is a row in PostgreSQL, from both processes' clients
    engine = sa.create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, question, answer, session_id, model_version FROM exchange")).all()
    engine.dispose()
    stored = {row.id: row for row in rows}
    assert len(rows) == len(answered) == 4 * len(QUESTIONS)  # 4 clients, each question once
    for reply in answered:
        row = stored[reply["id"]]
        assert (row.question, row.answer, row.model_version) == (reply["question"], reply["answer"],
                                                                   reply["model_version"])
        assert row.session_id == sessions[reply["question"].split("#")[1]]
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


def test_a_correction_made_through_one_process_reaches_a_paraphrase_on_the_other(tmp_path, backends):
    """A reviewer corrects an answer in process a's admin; process b, which
    has already answered the paraphrase (in other words) itself, gives the correction to it
    within a few seconds (CORRECTION_REFRESH_SECONDS=1), then the edited
    correction, and stops once the row is back to 미검토."""
    import requests

    from helpers import PASSWORD, token_in
    redis, postgres = backends
    models = tmp_path / "models"
    tiny_model(models)
    env = {"DATABASE_URL": postgres.create_database("corrections"), "SOCKETIO_MESSAGE_QUEUE": redis.url,
           "MODEL_DIR": str(models), "SECRET_KEY": "shared-secret", "REPLY_WORKERS": "1",
           "CORRECTION_REFRESH_SECONDS": "1"}
    flask_cli("db", "upgrade", env={**os.environ, **env})
    flask_cli("create-admin", "kim", env={**os.environ, **env, "CHATBOT_ADMIN_PASSWORD": PASSWORD})
    # No content word in common: by meaning (the real encoder, in both
    # gevent processes) or not at all.
    question, paraphrase = "비밀번호를 잊어버렸어요", "암호가 기억나지 않아요"

    servers = [LiveServer(tmp_path / name, env=env) for name in ("a", "b")]
    chats = []
    try:
        for server in servers:
            server.workdir.mkdir()
            server.start()
        a, b = servers
        on_a, on_b = Chat("a").connect(a.url), Chat("b").connect(b.url)
        chats = [on_a, on_b]
        assert on_b.ask(paraphrase)["route"] != "memory"  # b has built its index without the correction
        row_id = on_a.ask(question)["id"]

        admin = requests.Session()
        login = admin.post(a.url + "/login", allow_redirects=False, data={
            "csrf_token": token_in(admin.get(a.url + "/login").text), "username": "kim", "password": PASSWORD})
        assert login.status_code == 302 and "/login" not in login.headers["Location"]

        def edit(correction):
            page = admin.get(f"{a.url}/admin/exchange/edit/?id={row_id}")
            saved = admin.post(f"{a.url}/admin/exchange/edit/?id={row_id}", allow_redirects=False, data={
                "csrf_token": token_in(page.text), "corrected_answer": correction, "status": "reviewed"})
            assert saved.status_code == 302, saved.text[-2000:]

        def answer_on_b(done, seconds=10):
            """Ask b the paraphrase until done(reply); the reply and the seconds it took."""
            start = time.monotonic()
            while True:
                reply = on_b.ask(paraphrase)
                if done(reply) or time.monotonic() - start > seconds:
                    return reply, time.monotonic() - start
                time.sleep(0.2)

        edit("춘천은 오늘 맑아요.")
        assert on_a.ask(paraphrase)["answer"] == "춘천은 오늘 맑아요."  # the process that made it: at once
        reply, took = answer_on_b(lambda r: r["answer"] == "춘천은 오늘 맑아요.")
        assert (reply["answer"], reply["route"]) == ("춘천은 오늘 맑아요.", "memory") and took < 5, took
        # The reviewed question's vector is in PostgreSQL for the next start (chatbot/meaning_store.py).
        engine = sa.create_engine(env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT encoder, length(vector) FROM question_meaning")).all()
        engine.dispose()
        assert stored == [("e5-small", 768)], stored

        edit("춘천은 오후부터 비가 와요.")  # the same rows reviewed: only the audit shows the change
        reply, took = answer_on_b(lambda r: r["answer"] == "춘천은 오후부터 비가 와요.")
        assert reply["answer"] == "춘천은 오후부터 비가 와요." and took < 5, took

        page = admin.get(a.url + "/admin/exchange/")
        unmarked = admin.post(a.url + "/admin/exchange/action/", allow_redirects=False, data={
            "csrf_token": token_in(page.text), "action": "mark_unreviewed", "rowid": [str(row_id)],
            "url": "/admin/exchange/"})
        assert unmarked.status_code == 302
        reply, took = answer_on_b(lambda r: r["route"] != "memory")
        assert reply["route"] != "memory" and took < 5, took
    finally:
        for chat in chats:
            chat.close()
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


def test_api_and_kakao_limits_are_counted_across_processes_in_redis(tmp_path, backends):
    """With RATELIMIT_STORAGE_URI on Redis, a key's and a KakaoTalk user's
    rate limits count the requests to both processes together, and both
    channels' exchanges land in PostgreSQL with their channel."""
    import requests

    redis, postgres = backends
    models = tmp_path / "models"
    tiny_model(models)
    database = postgres.create_database("channels")
    env = {"DATABASE_URL": database, "SOCKETIO_MESSAGE_QUEUE": redis.url, "RATELIMIT_STORAGE_URI": redis.url,
           "MODEL_DIR": str(models), "SECRET_KEY": "shared-secret", "REPLY_WORKERS": "1",
           "API_RATE_LIMIT": "4/minute", "API_AUTH_FAILURE_LIMIT": "2/minute", "KAKAO_USER_RATE_LIMIT": "3/minute",
           "KAKAO_SKILL_SECRET": "multiprocess-kakao-secret-0001"}
    flask_cli("db", "upgrade", env={**os.environ, **env})
    key = flask_cli("api-key", "create", "multiprocess", env={**os.environ, **env}).stdout.split()[-1]
    assert key.startswith("hm_")
    unused_key = flask_cli("api-key", "create", "unused", env={**os.environ, **env}).stdout.split()[-1]

    def skill(server, user, text):
        response = requests.post(server.url + "/kakao/skill/" + env["KAKAO_SKILL_SECRET"],
                                 json=skill_payload(text, user), timeout=10)
        assert response.status_code == 200
        return response.json()["template"]

    servers = [LiveServer(tmp_path / name, env=env) for name in ("a", "b")]
    try:
        for server in servers:
            server.workdir.mkdir()
            server.start()
        a, b = servers
        statuses = [requests.post(server.url + "/api/v1/messages", json={"text": "안녕하세요"}, timeout=10,
                                  headers={"Authorization": f"Bearer {key}"}).status_code
                    for server in (a, b, a, b, a, b)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        answered = [bool(skill(server, "kakao-user-1", "배고파").get("quickReplies")) for server in (a, b, a, b)]
        assert answered == [True, True, True, False]  # the 4th is the rate-limit text, with no 👍/👎
        assert skill(b, "kakao-user-2", "배고파").get("quickReplies")  # another user: their own count
        # Refused keys count per address across both processes, and then a right key is refused too.
        guesses = [requests.post(server.url + "/api/v1/messages", json={"text": "안녕"}, timeout=10,
                                 headers={"Authorization": "Bearer hm_guess"}).status_code for server in (a, b, a)]
        assert guesses == [401, 401, 429]
        assert requests.post(b.url + "/api/v1/messages", json={"text": "안녕"}, timeout=10,
                             headers={"Authorization": f"Bearer {unused_key}"}).status_code == 429
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            counts = dict(connection.execute(sa.text("SELECT channel, count(*) FROM exchange GROUP BY channel")).all())
    finally:
        engine.dispose()
    assert counts == {"api": 4, "kakao": 4}


def test_the_migrations_on_postgresql(tmp_path, backends):
    """Every migration upgrades and downgrades on PostgreSQL (non-native enums
    as CHECK constraints, string lengths), and the result matches the models."""
    import flask_migrate
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from chatbot import create_app
    from chatbot.database import compared_objects
    from chatbot.extensions import db
    _, postgres = backends
    app = create_app({"SQLALCHEMY_DATABASE_URI": postgres.url.replace("/chatbot", "/postgres"), "SECRET_KEY": "x",
                      "MODEL_DIR": str(tmp_path / "models")})
    with app.app_context():
        try:
            flask_migrate.upgrade()
            with db.engine.connect() as connection:
                context = MigrationContext.configure(connection,
                                                     opts={"include_object": compared_objects})
                assert compare_metadata(context, db.metadata) == []
                checks = {c["name"] for c in sa.inspect(connection).get_check_constraints("exchange")}
            assert {"exchange_route", "exchange_status", "exchange_feedback"} <= checks
            flask_migrate.downgrade(revision="base")
            with db.engine.connect() as connection:
                assert sa.inspect(connection).get_table_names() == ["alembic_version"]
            flask_migrate.upgrade()
            with pytest.raises(sa.exc.IntegrityError):
                db.session.execute(sa.text(
                    "INSERT INTO exchange (question, question_key, answer, created_at, route, status) "
                    "VALUES ('q', 'q', 'a', now(), 'model', 'meh')"))
            db.session.rollback()
            db.session.execute(sa.text(  # the route added by the fourth migration
                "INSERT INTO exchange (question, question_key, answer, created_at, route, status) "
                "VALUES ('q', 'q', 'a', now(), 'known', 'unreviewed')"))
            db.session.commit()
            flask_migrate.downgrade(revision="b920c99c8ad7")  # takes the route back: the row becomes 'model'
            assert db.session.execute(sa.text("SELECT route FROM exchange")).scalar_one() == "model"
            db.session.commit()
        finally:
            db.session.remove()
            db.engine.dispose()


def kill_server(server):
    """SIGKILL gunicorn's worker and master, as a crash would."""
    import psutil
    for process in [*psutil.Process(server.process.pid).children(recursive=True), psutil.Process(server.process.pid)]:
        process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def test_nginx_from_the_deployment_docs_in_front_of_two_processes(tmp_path, backends):
    """The nginx configuration of docs/deployment.md: Socket.IO upgrades to a WebSocket through
    it, a client sticks to one process, and when that one dies the same chat
    session reconnects through nginx to the other, history and all."""
    import re

    import psutil
    redis, postgres = backends

    models = tmp_path / "models"
    tiny_model(models)
    env = {"DATABASE_URL": postgres.url, "SOCKETIO_MESSAGE_QUEUE": redis.url, "MODEL_DIR": str(models),
           "SECRET_KEY": "shared-secret", "PROXY_COUNT": "1", "REPLY_WORKERS": "1"}
    flask_cli("db", "upgrade", env={**os.environ, **env})
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    config = re.search(r"```nginx\n(.*?)```", deployment, re.S).group(1)
    servers = [LiveServer(tmp_path / name, env=env) for name in ("a", "b")]
    nginx, chat = None, None
    try:
        for server in servers:
            server.workdir.mkdir()
            server.start()
        nginx = services.Nginx(str(tmp_path), config, [f"127.0.0.1:{s.port}" for s in servers]).start()
        chat = Chat("nginx")
        chat.connect(nginx.url, transports=["polling", "websocket"])  # polling, then upgrade
        first = chat.ask("안녕하세요 #nginx")
        deadline = time.monotonic() + 15
        while chat.client.transport() != "websocket" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chat.client.transport() == "websocket"
        second = chat.ask("배고파 #nginx")

        # the process holding the WebSocket is the sticky one: kill it
        sticky = [s for s in servers if any(c.laddr.port == s.port and c.status == "ESTABLISHED"
                                            for c in psutil.net_connections("tcp"))]
        assert len(sticky) == 1, sticky
        kill_server(sticky[0])
        deadline = time.monotonic() + 15
        while chat.client.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        chat.close()
        chat.connect(nginx.url)  # the page reconnects by itself; nginx picks the live process
        chat.client.emit("history")
        assert [row["id"] for row in chat.wait("history")["exchanges"]] == [first["id"], second["id"]]
        third = chat.ask("고마워 #nginx")
        assert third["id"] > second["id"]
    finally:
        if chat:
            chat.close()
        if nginx:
            nginx.stop()
        for server in servers:
            server.stop()


# -- configuration, without any service ---------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("postgresql://bot:pw@db.example:5432/chatbot", "postgresql+psycopg://bot:pw@db.example:5432/chatbot"),
    ("postgres://bot@db/chatbot", "postgresql+psycopg://bot@db/chatbot"),
    ("postgresql+psycopg://bot@db/chatbot", "postgresql+psycopg://bot@db/chatbot"),
    ("postgresql+psycopg2://bot@db/chatbot", "postgresql+psycopg2://bot@db/chatbot"),
    ("sqlite:///instance/chatbot.db", "sqlite:///instance/chatbot.db"),
])
def test_database_urls_are_normalised(url, expected):
    from chatbot.config import normalise_database_url
    assert normalise_database_url(url) == expected


def test_a_postgresql_url_uses_psycopg_3(tmp_path):
    from chatbot import create_app
    from chatbot.extensions import db
    app = create_app({"SQLALCHEMY_DATABASE_URI": "postgresql://bot@127.0.0.1:1/chatbot", "SECRET_KEY": "x",
                      "MODEL_DIR": str(tmp_path / "models")})
    with app.app_context():
        assert (db.engine.dialect.name, db.engine.dialect.driver) == ("postgresql", "psycopg")
        db.engine.dispose()


def test_the_message_queue_is_used_only_when_configured(tmp_path):
    import socketio as python_socketio

    from chatbot import create_app
    from chatbot.extensions import socketio
    config = {"SECRET_KEY": "x", "MODEL_DIR": str(tmp_path / "models"),
              "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "chatbot.db")}
    create_app({**config, "SOCKETIO_MESSAGE_QUEUE": "redis://127.0.0.1:1/0"})  # connects lazily
    assert isinstance(socketio.server.manager, python_socketio.RedisManager)
    create_app(config)  # the global SocketIO forgets the queue again
    assert not isinstance(socketio.server.manager, python_socketio.PubSubManager)
