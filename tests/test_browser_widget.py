"""The chat widget in a real browser (Debian's chromium, driven by Playwright):
the bot (gunicorn) on one origin, with ALLOWED_ORIGINS listing a shop's
page served from another origin, which pastes the widget's one line.

The shop is http://localhost:PORT and the bot http://127.0.0.1:PORT: two
sites, so the widget's frame is a third-party frame, as on the web.  The
shop's page has a strict CSP of its own (no inline styles): the widget
must run under it.

Debian's chromium 156 blocks third-party cookies and storage by default
(its TrackingProtection3pcd feature), as Chrome's incognito windows do; Chrome
otherwise allows them, partitioned by top-level site.  The history test runs
on a second chromium with that feature off; the shared one shows what a
visitor whose browser blocks them gets.  Screenshots go to test-artifacts/.  Without a chromium
the browser tests are skipped, except in CI (CI=true), where that is a
failure (tests/conftest.py); the WebSocket origin test needs no browser.
"""
import http.server
import json
import re
import secrets
import threading

import pytest
import websocket

from helpers import WATCH, assert_clean, live_rows, shot
from live_server import LiveServer, free_port, prepare

pytestmark = pytest.mark.browser

OPEN = 'button[aria-label="채팅 열기"]'
CLOSE = '#hanmadi-widget-panel button[aria-label="채팅 닫기"]'  # the panel's own; the chat button says so too when open
FRAME = 'iframe[title="한마디 채팅"]'
CONNECTED = '#status[data-state="connected"]'

SHOP_PAGE = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>가게</title>
<script src="{bot}/widget.js" defer></script>
</head><body><h1>어서 오세요</h1><p>가게 페이지입니다.</p></body></html>
"""


class HostSite:
    """Another web site: one page that pastes the widget's snippet, under a strict CSP."""

    def __init__(self, bot_url):
        page = SHOP_PAGE.format(bot=bot_url).encode()
        csp = f"default-src 'self'; script-src 'self' {bot_url}; frame-src {bot_url}; style-src 'self'"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Security-Policy", csp)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """The bot, a shop it lists in ALLOWED_ORIGINS, and a stranger it does not."""
    workdir = tmp_path_factory.mktemp("live-widget")
    app = prepare(workdir)
    port = free_port()
    bot_url = f"http://127.0.0.1:{port}"
    shop, stranger = HostSite(bot_url), HostSite(bot_url)
    # Every page and socket in this module comes from 127.0.0.1: the per-address handshake
    # limit (tested in test_limits) would refuse some of them at random under a slow machine.
    live = LiveServer(workdir, port=port, env={"ALLOWED_ORIGINS": shop.url, "CONNECT_RATE": "0",
                                               "HANDSHAKE_TOTAL_RATE": "0"}).start()
    live.app = app
    yield live, shop, stranger
    live.stop()
    shop.stop()
    stranger.stop()


@pytest.fixture(scope="module")
def storage_allowed(browser):
    """A new page in a chromium that allows third-party (partitioned) storage."""
    from conftest import CHROMIUM_ARGS, chromium_path

    chromium = browser.browser_type.launch(executable_path=chromium_path(),
                                           args=CHROMIUM_ARGS + ["--disable-features=TrackingProtection3pcd"])
    contexts = []

    def new_page():
        ctx = chromium.new_context(locale="ko-KR")
        ctx.add_init_script(WATCH)
        contexts.append(ctx)
        page = ctx.new_page()
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        return page

    yield new_page
    for ctx in contexts:
        ctx.close()
    chromium.close()


def open_widget(page, site):
    page.goto(site.url + "/")
    page.click(OPEN)
    return page.frame_locator(FRAME)


def send(frame, text):
    before = frame.locator(".msg.bot[data-id]").count()
    frame.locator("#input").fill(text)
    frame.locator("#input").press("Enter")
    reply = frame.locator(".msg.bot[data-id]").nth(before)
    reply.wait_for(timeout=20000)
    return reply


def user_texts(frame):
    return frame.locator(".msg.user .bubble").evaluate_all(
        "els => els.map(e => Array.from(e.childNodes).filter(n => n.nodeType === 3).map(n => n.data).join(''))")


def test_a_listed_site_shows_the_chat_and_keeps_its_history(sites, storage_allowed):
    live, shop, _ = sites
    page = storage_allowed()
    page.goto(shop.url + "/")
    launcher = page.locator(OPEN)
    assert launcher.evaluate("b => b.tagName") == "BUTTON"
    assert launcher.get_attribute("aria-expanded") == "false"
    assert page.locator(FRAME).count() == 0  # no frame, no connection, until the visitor asks

    # the keyboard opens it: focus the button, Enter
    launcher.focus()
    page.keyboard.press("Enter")
    frame = page.frame_locator(FRAME)
    frame.locator(CONNECTED).wait_for(timeout=20000)
    assert page.locator('[aria-controls="hanmadi-widget-panel"]').get_attribute("aria-expanded") == "true"
    # a first visit: no token yet, only where to send the one the bot issues
    src = page.locator(FRAME).get_attribute("src")
    assert src == live.url + "/embed#origin=" + shop.url.replace(":", "%3A").replace("/", "%2F"), src

    reply = send(frame, "안녕하세요")
    assert reply.locator(".bubble").inner_text().strip()
    assert user_texts(frame) == ["안녕하세요"]
    first = live_rows(live)[-1]
    assert (first.question, first.channel) == ("안녕하세요", "widget")
    token = page.evaluate("localStorage.getItem('hanmadi.widget.session')")  # the shop's storage
    assert token.split(".")[0] == first.session_id

    # the panel's own close button gives the focus back to the chat button
    page.locator(CLOSE).click()
    assert not page.locator(FRAME).is_visible()
    assert page.evaluate("document.activeElement.getAttribute('aria-controls')") == "hanmadi-widget-panel"

    # a reload of the shop's page: the same chat, from the shop's localStorage (widget.js)
    page.reload()
    frame = open_widget(page, shop)
    frame.locator(CONNECTED).wait_for(timeout=20000)
    assert page.locator(FRAME).get_attribute("src").endswith("&session=" + token)
    frame.locator(".msg.bot[data-id]").first.wait_for(timeout=10000)
    assert user_texts(frame) == ["안녕하세요"]
    send(frame, "배고파")
    assert user_texts(frame) == ["안녕하세요", "배고파"]
    assert live_rows(live)[-1].session_id == first.session_id
    shot(page, "widget-desktop-open")
    assert_clean(page)  # nothing broke the shop's CSP, no errors in either document

    # The same visitor on the bot's own site has another chat: the frame's
    # localStorage is partitioned by the top-level site.
    own = page.context.new_page()
    own.goto(live.url + "/embed")
    own.wait_for_selector(CONNECTED, timeout=20000)
    own.wait_for_timeout(500)  # time for a history that must not come
    assert own.locator(".msg").count() == 0


def test_where_third_party_storage_is_blocked_the_history_still_survives_a_reload(sites, context):
    """Debian's chromium blocks a frame's third-party storage: the visitor's id
    comes from the shop's own storage instead (widget.js)."""
    live, shop, _ = sites
    page = context().new_page()
    frame = open_widget(page, shop)
    frame.locator(CONNECTED).wait_for(timeout=20000)
    assert page.locator(FRAME).element_handle().content_frame().evaluate(
        "() => { try { localStorage.length; return 'allowed'; } catch (e) { return e.name; } }") == "SecurityError"
    send(frame, "심심해")
    session = live_rows(live)[-1].session_id
    assert page.evaluate("localStorage.getItem('hanmadi.widget.session')").split(".")[0] == session
    page.reload()
    frame = open_widget(page, shop)
    frame.locator(CONNECTED).wait_for(timeout=20000)
    frame.locator(".msg.bot[data-id]").first.wait_for(timeout=10000)
    assert user_texts(frame) == ["심심해"]
    send(frame, "피곤해")
    assert live_rows(live)[-1].session_id == session
    assert_clean(page)


def test_on_a_phone_the_open_widget_fills_the_screen(sites, context):
    live, shop, _ = sites
    page = context("mobile").new_page()
    frame = open_widget(page, shop)
    frame.locator(CONNECTED).wait_for(timeout=20000)
    box = page.locator(FRAME).bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 360, 640)
    assert not page.locator(OPEN).is_visible()  # it would cover the send button
    send(frame, "날씨 어때")
    assert page.evaluate("document.documentElement.scrollWidth") == 360
    shot(page, "widget-mobile-open")
    page.locator(CLOSE).click()
    assert page.locator(OPEN).is_visible()
    assert not page.locator(FRAME).is_visible()
    assert_clean(page)


def attacker_socket(live, auth, ask_history=False):
    """The attacker's script: a raw Socket.IO connection with ``auth``; the
    token the bot sent it (None if none) and, if asked, the questions of the
    history it gets."""
    url = live.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=10)
    token, connected = None, False
    try:
        assert ws.recv().startswith("0{")
        ws.send("40" + json.dumps(auth))
        while True:
            frame = ws.recv()
            if frame == "2":
                ws.send("3")
            elif frame.startswith("40"):
                connected = True
                if not ask_history:
                    return token, None
                ws.send('42["history"]')
            elif frame.startswith("42"):
                name, data = json.loads(frame[2:])[:2]
                if name == "session":
                    token = data["token"]
                elif name == "history":
                    assert connected
                    return token, [x["question"] for x in data["exchanges"]]
                else:
                    raise AssertionError(frame)
            else:
                raise AssertionError(frame)
    finally:
        ws.close()


SECRET = "제 전화번호는 010-2345-6789예요"


@pytest.mark.parametrize("fixed_by", ["a picked id", "a token the bot issued to the attacker"])
def test_a_link_to_embed_cannot_hand_a_visitor_a_chat_the_attacker_can_read(sites, context, fixed_by):
    """Session fixation: an attacker gets a visitor to open
    https://BOT/embed#session=S as a page (not in a frame), with an id S they
    picked or a token the bot sent their own connection; the visitor types
    something private; the attacker connects with S and asks for the history."""
    live, _, _ = sites
    picked = secrets.token_hex(16)  # what widget.js used to put there
    fixed = picked
    if fixed_by != "a picked id":
        fixed = attacker_socket(live, {"channel": "widget"})[0] or picked  # old servers send no token
    victim = context().new_page()
    victim.goto(f"{live.url}/embed#session={fixed}")
    victim.wait_for_selector(CONNECTED, timeout=20000)
    send(victim, SECRET)
    row = live_rows(live)[-1]
    assert (row.question, row.channel) == (SECRET, "widget")

    _, seen = attacker_socket(live, {"session": fixed, "channel": "widget"}, ask_history=True)
    assert seen == []
    assert row.session_id not in (picked, fixed.split(".")[0])
    # the visitor's own chat goes on after a reload (the bot's own storage)
    victim.reload()
    victim.wait_for_selector(CONNECTED, timeout=20000)
    victim.locator(".msg.bot[data-id]").first.wait_for(timeout=10000)
    assert user_texts(victim) == [SECRET]
    assert_clean(victim)


def test_a_site_not_listed_gets_no_chat(sites, context):
    live, shop, stranger = sites
    page = context().new_page()
    page.goto(stranger.url + "/")
    with page.expect_console_message(lambda m: "frame-ancestors" in m.text, timeout=20000) as message:
        page.click(OPEN)
    # Chromium: Framing '<bot>/' violates ... directive: "frame-ancestors 'self' <shop>". The request has been blocked.
    assert message.value.text.startswith(f"Framing '{live.url}/' violates")
    assert f"\"frame-ancestors 'self' {shop.url}\"" in message.value.text
    assert page.locator(FRAME).count() == 1
    page.wait_for_timeout(500)
    assert page.locator(FRAME).content_frame.locator("#messages").count() == 0  # the browser did not render /embed


def test_socketio_refuses_a_websocket_from_an_unlisted_origin(sites):
    live, shop, stranger = sites
    url = live.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin=stranger.url, timeout=10)
    assert refused.value.status_code == 400
    for origin in (shop.url, live.url):  # the listed site, and the bot's own pages
        ws = websocket.create_connection(url, origin=origin, timeout=10)
        try:
            assert ws.recv().startswith('0{"sid":')
        finally:
            ws.close()
