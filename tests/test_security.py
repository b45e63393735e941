"""HTTP security: headers and CSP on every response, login throttling,
cookies, the secret key, and the favicon."""
import re
import subprocess
from pathlib import Path

import pytest

from chatbot.security import LoginThrottle, content_security_policy
from helpers import PASSWORD, add_exchange, get_row, token_in

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
                "object-src 'none'")


def assert_security_headers(headers, csp=EXPECTED_CSP):
    assert headers["Content-Security-Policy"] == csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"


def test_csp_text():
    assert content_security_policy() == EXPECTED_CSP
    assert "script-src 'self' 'nonce-abc';" in content_security_policy("abc")
    assert "unsafe" not in content_security_policy("abc")


@pytest.mark.parametrize("path", ["/", "/login", "/logout", "/admin/", "/static/chat.js", "/favicon.ico",
                                  "/no-such-page", "/static/vendor/socket.io.min.js"])
def test_every_response_has_the_security_headers(client, path):
    response = client.get(path)
    assert_security_headers(response.headers)


def test_socketio_polling_responses_have_the_headers_too(client):
    response = client.get("/socket.io/?EIO=4&transport=polling")
    assert response.status_code == 200
    assert_security_headers(response.headers)
    bad = client.get("/socket.io/?EIO=4&transport=polling&sid=nope")
    assert bad.status_code == 400
    assert_security_headers(bad.headers)


def test_admin_pages_carry_a_nonce_that_matches_their_scripts(logged_in):
    response = logged_in.get("/admin/exchange/")
    csp = response.headers["Content-Security-Policy"]
    match = re.search(r"script-src 'self' 'nonce-([A-Za-z0-9_-]+)';", csp)
    assert match, csp
    html = response.get_data(as_text=True)
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all(f'nonce="{match.group(1)}"' in tag for tag in scripts), scripts
    assert logged_in.get("/admin/exchange/").headers["Content-Security-Policy"] != csp  # fresh per request


def test_no_inline_event_handlers_or_styles_in_our_pages(logged_in, app):
    row_id = add_exchange(app, "질문")
    for path in ["/", "/admin/", "/admin/exchange/", f"/admin/exchange/edit/?id={row_id}", "/logout"]:
        response = logged_in.get(path)
        assert response.status_code == 200, path  # the page itself, not a redirect's empty body
        html = response.get_data(as_text=True)
        # onclick="..." is blocked (and reported) by the CSP: see templates/admin/
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert "style=" not in html, path
        inline = [s for s in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S) if s[1].strip()]
        assert inline == [], path


def test_bulk_action_menu_has_no_onclick(logged_in, app):
    add_exchange(app, "질문")
    html = logged_in.get("/admin/exchange/").get_data(as_text=True)
    assert 'data-action="mark_reviewed"' in html and "review.js" in html
    assert "modelActions.execute" not in html


def test_session_cookie_flags(reviewer, auth):
    response = auth.login()
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_secure_cookie_can_be_required(monkeypatch):
    import importlib

    import chatbot.config as config
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "1")
    try:
        assert importlib.reload(config).Config.SESSION_COOKIE_SECURE is True
    finally:
        monkeypatch.delenv("SESSION_COOKIE_SECURE")
        importlib.reload(config)


def test_no_secret_key_in_source():
    listed = subprocess.run(["git", "ls-files", "*.py", "*.html", "*.cfg", "*.ini", "*.toml", "*.txt"],
                            cwd=ROOT, capture_output=True, text=True)
    files = listed.stdout.split() if listed.returncode == 0 else [
        str(p.relative_to(ROOT)) for folder in ("chatbot", "migrations", "scripts", "tests")
        for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".html", ".cfg", ".ini", ".toml", ".txt")]
    assert files
    for name in files:
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"""SECRET_KEY\s*=\s*["'][^"']+["']""", text), name
    from chatbot.config import Config
    assert Config.SECRET_KEY == (__import__("os").environ.get("SECRET_KEY") or None)


def test_secret_key_is_generated_into_the_instance_folder(tmp_path):
    from chatbot.config import load_secret_key
    key = load_secret_key(tmp_path)
    assert len(key) == 64 and load_secret_key(tmp_path) == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_favicon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype == "image/vnd.microsoft.icon"
    assert response.data[:4] == b"\x00\x00\x01\x00"
    assert client.get("/static/favicon.svg").status_code == 200
    assert "favicon.svg" in client.get("/").get_data(as_text=True)


# -- login throttling -----------------------------------------------------------

def test_five_failures_lock_the_login_with_429(client, reviewer, auth):
    for _ in range(5):
        assert auth.login("kim", "wrong password").status_code == 401
    response = auth.login("kim", PASSWORD)  # even the right password, now
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    html = response.get_data(as_text=True)
    assert "로그인 시도가 너무 많습니다" in html and "분 뒤에 다시 시도하세요" in html
    assert PASSWORD not in html
    assert client.get("/admin/").status_code == 302
    # another user name from the same address is not locked yet
    assert auth.login("lee", "whatever password").status_code == 401


def test_a_successful_login_clears_the_failures(reviewer, auth):
    for _ in range(4):
        auth.login("kim", "wrong password")
    assert auth.login("kim", PASSWORD).status_code == 302
    auth.logout()
    for _ in range(4):
        assert auth.login("kim", "wrong password").status_code == 401


def test_throttle_window_and_address_limit():
    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window_seconds=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.begin("1.2.3.4", "kim") == 0
    assert throttle.begin("1.2.3.4", "kim") == pytest.approx(60)
    assert throttle.begin("1.2.3.4", " KIM ") > 0  # names are compared case- and space-insensitively
    assert throttle.begin("5.6.7.8", "kim") == 0  # per address
    now[0] += 61
    assert throttle.begin("1.2.3.4", "kim") == 0
    # many names from one address: 4 x 3 = 12 failures locks the address
    for i in range(12):
        assert throttle.begin("9.9.9.9", f"user{i}") == 0
    assert throttle.begin("9.9.9.9", "user99") > 0


def test_throttle_success_takes_the_attempt_back():
    throttle = LoginThrottle(max_failures=2, window_seconds=60)
    for _ in range(10):
        assert throttle.begin("1.1.1.1", "kim") == 0
        throttle.succeeded("1.1.1.1", "kim")
    assert throttle.retry_after("1.1.1.1", "kim") == 0


def test_throttle_memory_is_bounded():
    throttle = LoginThrottle(max_failures=5, window_seconds=60, max_keys=100)
    for i in range(1000):
        throttle.begin(f"10.0.{i // 256}.{i % 256}", "x" * 80)
    assert len(throttle._failures) <= 100


def test_csrf_on_every_admin_post(logged_in, app):
    """Every admin form posts a token, and a POST without one changes nothing."""
    row_id = add_exchange(app, "질문")
    for path, data in [
        ("/admin/exchange/action/", {"action": "mark_reviewed", "rowid": [str(row_id)]}),
        (f"/admin/exchange/edit/?id={row_id}", {"status": "reviewed", "corrected_answer": "x"}),
        ("/admin/exchange/delete/", {"id": str(row_id)}),
        ("/admin/exchange/new/", {"status": "reviewed"}),
        ("/logout", {}),
    ]:
        assert logged_in.post(path, data=data).status_code == 400, path
    row = get_row(app, row_id)
    assert row.status == "unreviewed" and row.corrected_answer is None
    assert logged_in.get("/admin/").status_code == 200  # still logged in: logout needed a token


def test_behind_a_proxy_the_login_limit_counts_the_client_address(tmp_path, make_reviewer, make_app):
    app = make_app(PROXY_COUNT=1, LOGIN_MAX_FAILURES=2,
                   SQLALCHEMY_DATABASE_URI="sqlite:///" + str(tmp_path / "proxy.db"))
    for address, expected in [("203.0.113.1", 401), ("203.0.113.1", 401), ("203.0.113.1", 429),
                              ("198.51.100.7", 401)]:
        client = app.test_client()
        headers = {"X-Forwarded-For": address}
        token = token_in(client.get("/login", headers=headers).get_data(as_text=True))
        response = client.post("/login", headers=headers,
                               data={"csrf_token": token, "username": "kim", "password": "wrong password"})
        assert response.status_code == expected, address


def test_without_proxy_count_forwarded_headers_are_ignored(client, reviewer):
    statuses = []
    for i in range(6):
        headers = {"X-Forwarded-For": f"10.0.0.{i}"}  # a client cannot pick a fresh address
        token = token_in(client.get("/login", headers=headers).get_data(as_text=True))
        statuses.append(client.post("/login", headers=headers, data={
            "csrf_token": token, "username": "kim", "password": "wrong password"}).status_code)
    assert statuses == [401] * 5 + [429]


# -- ALLOWED_HOSTS (Flask's TRUSTED_HOSTS) ----------------------------------------------

POLLING = "/socket.io/?EIO=4&transport=polling"


def test_allowed_hosts_refuse_any_other_host_socket_io_included(make_app):
    """DNS rebinding: a page of evil.example whose name now resolves to the bot
    is same-origin with itself, so only the Host header gives it away."""
    app = make_app(ALLOWED_HOSTS="bot.example, .example.org  localhost")
    client = app.test_client()
    for host in ("bot.example", "bot.example:8443", "localhost", "chat.example.org"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
        assert client.get(POLLING, headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "bot.example.evil.example", "example.org.evil", "127.0.0.1:5000"):
        for path in ("/", "/login", "/api/v1/openapi.json", "/no-such-page", POLLING):
            response = client.get(path, headers={"Host": host})
            assert response.status_code == 400, (host, path)
        # the rebinding page's own origin, as its browser sends it
        response = client.get(POLLING, headers={"Host": host, "Origin": f"http://{host}"})
        assert response.status_code == 400 and "sid" not in response.get_data(as_text=True)
    refused = client.get(POLLING, headers={"Host": "evil.example"})
    assert refused.headers["X-Frame-Options"] == "DENY"  # still with the security headers


def test_allowed_hosts_behind_a_proxy_check_the_forwarded_host(make_app):
    app = make_app(ALLOWED_HOSTS="bot.example", PROXY_COUNT=1)
    client = app.test_client()
    upstream = {"Host": "127.0.0.1:5001"}
    assert client.get("/", headers={**upstream, "X-Forwarded-Host": "bot.example"}).status_code == 200
    assert client.get(POLLING, headers={**upstream, "X-Forwarded-Host": "bot.example"}).status_code == 200
    assert client.get("/", headers={**upstream, "X-Forwarded-Host": "evil.example"}).status_code == 400
    assert client.get(POLLING, headers={**upstream, "X-Forwarded-Host": "evil.example"}).status_code == 400


def test_without_allowed_hosts_any_host_is_served(make_app):
    client = make_app().test_client()
    assert client.get("/", headers={"Host": "anything.example"}).status_code == 200
    assert client.get(POLLING, headers={"Host": "anything.example"}).status_code == 200
