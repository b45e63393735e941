"""Plain helpers and data shared by the test modules; the shared fixtures are
in tests/conftest.py.

tests/ is not a package: pytest puts this folder on sys.path (its default
"prepend" import mode) as it imports conftest.py and the test modules, so
they import this module as ``helpers``.
"""
import asyncio
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import jinja2
import sqlalchemy as sa

from chatbot import morph
from chatbot.database import REVIEWED, Exchange, Reviewer
from chatbot.extensions import db, socketio
from live_server import ROOT

PASSWORD = "correct horse battery"  # the reviewer's (tests/conftest.py: ``reviewer``, ``auth``)
SHARED_DATA = ROOT.parent / "shared" / "data" / "chatbot_data" / "ChatbotData.train.csv"


def token_in(html):
    """The CSRF token of the first form in a page."""
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "no csrf_token in the page"
    return match.group(1)


def run_async(coroutine):
    """``asyncio.run(coroutine)`` on a thread of its own: the session's browser
    (Playwright's sync API, tests/conftest.py) keeps an event loop running on
    the test's thread once a browser test has run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def run_in_a_gevent_process(code):
    """``code`` in a new Python process that gevent patches first, as the
    server's worker is; its output, once it exited 0."""
    done = subprocess.run([sys.executable, "-c", "from gevent import monkey; monkey.patch_all()\n" + code],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done


# -- made once per test process, handed out as copies ------------------------------

_made_once_dir = None


def made_once_dir():
    """This test process's own folder for what it makes once and hands out
    copies of (a migrated database, tiny models); removed at exit."""
    global _made_once_dir
    if _made_once_dir is None:
        _made_once_dir = Path(tempfile.mkdtemp(prefix="test-made-once-"))
        atexit.register(shutil.rmtree, _made_once_dir, ignore_errors=True)
    return _made_once_dir


def migrated_sqlite(path):
    """Make ``path`` an empty SQLite database at the migrations' head: a
    copy of one file migrated once per process by ``flask db upgrade`` (as
    `make run` does), instead of the migrations run again for each test.
    The migrations themselves are tests/test_migrations.py's to test."""
    template = made_once_dir() / "migrated.db"
    if not template.exists():
        # Only what it needs of the environment: a test's own settings stay out.
        env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
        env.update({"DATABASE_URL": f"sqlite:///{template}", "SECRET_KEY": "migrated-template",
                    "MODEL_DIR": str(made_once_dir() / "template-models")})
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        # Its process is gone, so SQLite's write-ahead log is in the file itself.
        assert not Path(f"{template}-wal").exists()
    shutil.copyfile(template, path)


class CompiledTemplates(jinja2.BytecodeCache):
    """The templates' compiled code in memory, for every app a test process
    makes (tests/conftest.py: make_app): each new app would parse and
    compile them all again.  Jinja uses cached code only while its
    template's source checksum still matches."""

    def __init__(self):
        self.code = {}

    def load_bytecode(self, bucket):
        if bucket.key in self.code:
            bucket.bytecode_from_string(self.code[bucket.key])

    def dump_bytecode(self, bucket):
        self.code[bucket.key] = bucket.bytecode_to_string()


COMPILED_TEMPLATES = CompiledTemplates()


# -- the database ------------------------------------------------------------------

@functools.cache
def password_hash(password):
    """Reviewer.set_password's hash of ``password``, made once per process:
    its scrypt is slow on purpose (a tenth of a second), and hundreds of
    tests make a reviewer.  Logging in still checks the password for real."""
    reviewer = Reviewer()
    reviewer.set_password(password)
    return reviewer.password_hash


def add_exchange(app, question, answer="답", minutes_ago=0, **fields):
    with app.app_context():
        row = Exchange(question=question, question_key=question, answer=answer,
                       created_at=datetime(2024, 5, 1, 12, 0) - timedelta(minutes=minutes_ago), **fields)
        db.session.add(row)
        db.session.commit()
        return row.id


def add_reviewed(app, question, corrected_answer, reviewer="minji"):
    """A reviewed exchange for ``question``, as the edit form leaves it."""
    with app.app_context():
        row = Exchange(question=question, question_key=morph.question_key(question), answer="틀린 답",
                       corrected_answer=corrected_answer)
        db.session.add(row)
        row.mark(REVIEWED, reviewer)
        db.session.commit()


def get_row(app, row_id):
    with app.app_context():
        return db.session.get(Exchange, row_id)


def statuses(app):
    with app.app_context():
        return dict(db.session.execute(sa.select(Exchange.id, Exchange.status)).all())


def rows(app):
    with app.app_context():
        return db.session.execute(sa.select(Exchange).order_by(Exchange.id)).scalars().all()


def live_rows(live):
    """Every exchange a live server (tests/live_server.py) stored, its file's
    connections closed again afterwards."""
    with live.app.app_context():
        result = db.session.execute(sa.select(Exchange).order_by(Exchange.id)).scalars().all()
        db.engine.dispose()
        return result


# -- the chat over Socket.IO -------------------------------------------------------

def connect(app, token=None, channel=None):
    """A chat connection, as the page makes it: with the token of the chat
    session to continue (a reload of the same tab), or None for a new chat.
    The server's ``session`` event is taken off the queue: its token is
    ``sock.token``."""
    auth = {key: value for key, value in (("session", token), ("channel", channel)) if value is not None}
    sock = socketio.test_client(app, flask_test_client=app.test_client(), auth=auth)
    sock.token = session_token_of(sock)
    return sock


def session_token_of(sock):
    """The token in the ``session`` event a new connection gets first (chatbot/chat.py)."""
    received = sock.get_received()
    assert [event["name"] for event in received] == ["session"], received
    return received[0]["args"][0]["token"]


def ask(sock, data):
    sock.emit("message", data)
    received = sock.get_received()
    assert len(received) == 1, received
    return received[0]["name"], received[0]["args"][0]


# -- KakaoTalk ---------------------------------------------------------------------

BOT_ID = "5a548e36aea1a43fa851ecd9"
BLOCK_ID = "5a56ec0008cc1461d75291f6"


def skill_payload(utterance, user_id="botUserKey-abc123", client_extra=None, bot_id=BOT_ID, block_id=BLOCK_ID):
    """A whole SkillPayload as Open Builder sends it (its documented fields)."""
    return {
        "intent": {"id": block_id, "name": "폴백 블록"},
        "userRequest": {
            "timezone": "Asia/Seoul",
            "params": {"ignoreMe": "true"},
            "block": {"id": block_id, "name": "폴백 블록"},
            "utterance": utterance,
            "lang": "ko",
            "user": {"id": user_id, "type": "botUserKey",
                     "properties": {"botUserKey": user_id, "plusfriendUserKey": "pfk-" + user_id}},
        },
        "contexts": [],
        "bot": {"id": bot_id, "name": "한마디"},
        "action": {"name": "한마디 스킬", "clientExtra": client_extra, "params": {}, "id": "skill-id-1",
                   "detailParams": {}},
    }


# -- training data and a tiny model ------------------------------------------------

TINY_PAIRS = [
    ("안녕하세요", "안녕하세요! 반가워요."),
    ("안녕", "안녕하세요! 반가워요."),
    ("배고파", "맛있는 거 드세요."),
    ("뭐 먹지", "김치찌개 어때요?"),
    ("날씨 어때", "맑고 따뜻해요."),
    ("비 와", "우산 챙기세요."),
    ("심심해", "산책 어때요?"),
    ("피곤해", "푹 쉬세요."),
    ("너 누구야", "저는 한마디예요."),
    ("고마워", "천만에요."),
]
TINY_MODEL = dict(max_steps=3, embed_dim=16, hidden_dim=16, quiet=True)


# What a training run reads from the environment besides its arguments.
TRAINER_ENVIRONMENT = ("MORPH_BACKEND", "MEANING_ENCODER", "MEANING_MODEL_FILE")
_trained = {}  # (pairs, settings, environment) -> a model this process trained; only copies are handed out


def trained_model(pairs, models_root, **settings):
    """A model trained on ``pairs`` with ``settings`` (run_training's),
    published into models_root (and activated unless activate=False); its
    directory.

    Training is deterministic (a fixed seed; tests/test_train.py checks it),
    so each setting is trained once per test process, and every call gets a
    copy of that model published the way the trainer publishes (a temp dir
    renamed to a new version name): the same files for a fraction of the
    time.  tests/test_train.py trains for real where training is the point."""
    from chatbot import versions
    from chatbot.train import run_training

    key = (repr(pairs), repr(sorted(settings.items())),
           tuple(os.environ.get(name) for name in TRAINER_ENVIRONMENT))
    if key not in _trained:
        _trained[key] = run_training(pairs, made_once_dir() / "models", **{**settings, "activate": False})
    temp_dir = versions.make_temp_dir(models_root)
    shutil.copytree(_trained[key], temp_dir, copy_function=shutil.copy, dirs_exist_ok=True)
    version_dir = versions.publish(temp_dir, models_root)
    if settings.get("activate", True):
        versions.activate(models_root, version_dir.name)
    return version_dir


def tiny_model(models_root, **overrides):
    """A tiny model trained on TINY_PAIRS (trained_model) in models_root, and activated; its directory."""
    return trained_model(TINY_PAIRS, models_root, **{**TINY_MODEL, **overrides})


PAIRS = [
    ("안녕하세요", "안녕하세요. 반가워요."),
    ("반가워", "저도 반가워요."),
    ("오늘 날씨 어때?", "맑고 따뜻해요."),
    ("비 올까?", "우산을 챙기세요."),
    ("배고파", "맛있는 거 드세요."),
    ("점심 뭐 먹지?", "비빔밥 어때요?"),
    ("저녁 메뉴 추천해줘", "따뜻한 국수 어때요?"),
    ("심심해", "산책 어때요?"),
    ("주말에 뭐 하지?", "영화 보러 가요."),
    ("피곤해", "푹 쉬세요."),
    ("잠이 안 와", "따뜻한 우유를 마셔 보세요."),
    ("고마워", "천만에요."),
    ("잘 자", "좋은 꿈 꾸세요."),
    ("좋은 아침", "좋은 아침이에요!"),
    ("커피 마실까?", "좋아요. 한 잔 해요."),
    ("운동하기 싫어", "조금만 걸어 봐요."),
    ("시험 망쳤어", "다음에 잘하면 돼요."),
    ("생일 축하해줘", "생일 축하해요!"),
    ("너 이름이 뭐야?", "저는 챗봇이에요."),
    ("몇 살이야?", "비밀이에요."),
]


# -- the browser (tests/test_browser*.py; the ``context`` fixture is in conftest.py) --

ARTIFACTS = ROOT / "test-artifacts"
VIEWPORTS = {
    "desktop": dict(viewport={"width": 1280, "height": 800}),
    "mobile": dict(viewport={"width": 360, "height": 640}, is_mobile=True, has_touch=True, device_scale_factor=2),
}
# Records every CSP violation and dialog, from before the page's own scripts run.
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sourceFile || ''));
});
window.__typingSeen = false;
new MutationObserver(function (records) {
  records.forEach(function (r) {
    r.addedNodes.forEach(function (n) {
      if (n.classList && n.classList.contains('typing')) window.__typingSeen = true;
    });
  });
}).observe(document, {childList: true, subtree: true});
"""


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def assert_clean(page):
    assert page.evaluate("window.__csp") == [], "CSP violations"
    errors = [e for e in page.console_errors if "favicon" not in e]
    assert errors == [], errors


def admin_login(ctx, live, next_path="/admin/exchange/"):
    page = ctx.new_page()
    page.goto(live.url + next_path)
    assert "/login" in page.url
    page.fill("#username", "kim")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(next_path) + "$"))
    return page
