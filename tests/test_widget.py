"""The chat widget (chatbot/widget.py): /widget.js, /embed and who may frame
it, and which origins may open a Socket.IO connection (ALLOWED_ORIGINS).
The same in a real browser, from other origins: tests/test_browser_widget.py."""
import re

import pytest

from chatbot.config import parse_origins
from chatbot.database import CHANNEL_WIDGET
from helpers import ask, connect, get_row

SHOP = "https://shop.example.com"
BLOG = "http://blog.example.org:8080"
POLLING = "/socket.io/?EIO=4&transport=polling"


def directives(csp):
    return dict(part.strip().split(" ", 1) for part in csp.split(";"))


@pytest.fixture
def app(make_app):
    """This module's app (and so ``client``, ``logged_in``) lists two sites."""
    return make_app(ALLOWED_ORIGINS=f"{SHOP}, {BLOG}/")


def test_widget_js_is_a_cacheable_script_that_frames_embed(client):
    response = client.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    script = response.get_data(as_text=True)
    assert 'frame.src = BOT + "/embed#origin=" + encodeURIComponent(window.location.origin) +' in script
    assert 'event.source !== frame.contentWindow || event.origin !== BOT' in script  # tokens from the frame only
    assert "var BOT = new URL(script.src).origin;" in script
    assert "innerHTML" not in script and "setAttribute(\"style\"" not in script


def test_embed_may_be_framed_by_itself_and_the_allowed_origins_only(app):
    response = app.test_client().get("/embed")
    assert response.status_code == 200
    assert "X-Frame-Options" not in response.headers
    embed = directives(response.headers["Content-Security-Policy"])
    assert embed["frame-ancestors"] == f"'self' {SHOP} {BLOG}"
    # everything else as strict as the chat page's
    page = directives(app.test_client().get("/").headers["Content-Security-Policy"])
    assert {k: v for k, v in embed.items() if k != "frame-ancestors"} == \
        {k: v for k, v in page.items() if k != "frame-ancestors"}


def test_without_allowed_origins_only_the_bots_own_pages_may_frame_embed(make_app):
    response = make_app().test_client().get("/embed")
    assert directives(response.headers["Content-Security-Policy"])["frame-ancestors"] == "'self'"
    assert "X-Frame-Options" not in response.headers


@pytest.mark.parametrize("path", ["/", "/widget.js", "/login", "/admin/", "/static/chat.js", "/no-such-page",
                                  "/embed/", "/embedx", POLLING])
def test_every_other_response_stays_unframeable(app, path):
    response = app.test_client().get(path)
    assert directives(response.headers["Content-Security-Policy"])["frame-ancestors"] == "'none'", path
    assert response.headers["X-Frame-Options"] == "DENY", path


def test_admin_pages_stay_unframeable(logged_in):
    response = logged_in.get("/admin/exchange/")
    assert response.status_code == 200
    csp = directives(response.headers["Content-Security-Policy"])
    assert csp["frame-ancestors"] == "'none'"
    assert csp["script-src"].startswith("'self' 'nonce-")
    assert response.headers["X-Frame-Options"] == "DENY"


def test_embed_is_the_chat_page_on_the_widget_channel(client):
    embed = client.get("/embed").get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    assert '<body class="embed" data-channel="widget" data-storage="local">' in embed
    assert "<body>" in page and "data-channel" not in page
    # one chat client: the same script and stylesheet, nothing else
    for html in (embed, page):
        assert re.findall(r'<script src="([^"]+)"', html) == ["/static/vendor/socket.io.min.js", "/static/chat.js"]
        assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == ["/static/chat.css"]


def test_a_widget_connection_records_the_widget_channel(app):
    sock = connect(app, channel="widget")
    name, reply = ask(sock, {"text": "안녕"})
    assert name == "reply"
    row = get_row(app, reply["id"])
    assert (row.channel, row.session_id) == (CHANNEL_WIDGET, sock.token.split(".")[0])


# -- which pages may open a Socket.IO connection --------------------------------------
# Flask's test client goes through python-engineio's WSGI app, which checks the
# Origin header of every handshake, WebSocket or polling, before the transport.

def handshake(app, origin, **headers):
    return app.test_client().get(POLLING, headers={"Origin": origin, **headers})


@pytest.mark.parametrize("origin", [SHOP, BLOG])
def test_a_listed_origin_may_connect(app, origin):
    response = handshake(app, origin)
    assert response.status_code == 200
    assert response.get_data(as_text=True).startswith('0{"sid":')
    assert response.headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://shop.example.com", "https://shop.example.com:8443",
                                    "null"])
def test_an_unlisted_origin_is_refused(app, origin):
    response = handshake(app, origin)
    assert response.status_code == 400
    assert response.get_data(as_text=True) == '"Not an accepted origin."'
    assert "Access-Control-Allow-Origin" not in response.headers


def test_without_allowed_origins_another_site_is_refused(make_app):
    assert handshake(make_app(), SHOP).status_code == 400


@pytest.mark.parametrize("allowed", ["", SHOP])
def test_the_bots_own_origin_keeps_working_directly_and_behind_a_proxy(make_app, allowed):
    app = make_app(ALLOWED_ORIGINS=allowed, PROXY_COUNT=1)
    assert handshake(app, "http://localhost").status_code == 200  # the test client's Host
    assert handshake(app, "http://bot.example", Host="bot.example").status_code == 200
    # nginx: TLS ends there, the app sees http and the proxy's headers
    assert handshake(app, "https://bot.example", Host="bot.example", **{"X-Forwarded-Proto": "https"}).status_code == 200
    assert handshake(app, "https://bot.example", Host="127.0.0.1:5001",
                     **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example"}).status_code == 200
    assert handshake(app, "https://other.example", Host="bot.example",
                     **{"X-Forwarded-Proto": "https"}).status_code == 400


def test_without_a_proxy_forwarded_headers_make_no_origin_the_bots_own(make_app):
    """PROXY_COUNT=0: X-Forwarded-Proto/-Host come from the client itself."""
    app = make_app()
    assert handshake(app, "http://bot.example", Host="bot.example").status_code == 200
    assert handshake(app, "https://bot.example", Host="bot.example", **{"X-Forwarded-Proto": "https"}).status_code == 400
    assert handshake(app, "https://evil.example", Host="bot.example",
                     **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}).status_code == 400
    assert handshake(app, "http://evil.example", Host="bot.example",
                     **{"X-Forwarded-Host": "evil.example"}).status_code == 400


# -- ALLOWED_ORIGINS ----------------------------------------------------------------

def test_allowed_origins_are_split_on_commas_and_spaces_and_normalised():
    assert parse_origins("") == []
    assert parse_origins(" https://Shop.Example.com/,http://localhost:8000  https://shop.example.com\n"
                         "http://[::1]:5000") == ["https://shop.example.com", "http://localhost:8000", "http://[::1]:5000"]


@pytest.mark.parametrize("bad", ["*", "shop.example.com", "https://shop.example.com/path", "'self'",
                                 "https://a.example;script-src", "ftp://files.example", "https://"])
def test_anything_but_an_origin_is_refused_at_start_up(bad):
    with pytest.raises(RuntimeError, match="ALLOWED_ORIGINS"):
        parse_origins(f"https://ok.example {bad}")


def test_allowed_origins_from_the_environment(monkeypatch):
    import importlib

    import chatbot.config as config
    monkeypatch.setenv("ALLOWED_ORIGINS", f"{SHOP},{BLOG}")
    try:
        assert importlib.reload(config).Config.ALLOWED_ORIGINS == [SHOP, BLOG]
    finally:
        monkeypatch.delenv("ALLOWED_ORIGINS")
        assert importlib.reload(config).Config.ALLOWED_ORIGINS == []
