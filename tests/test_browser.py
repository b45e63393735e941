"""The chat and the review pages in a real browser (Debian's chromium, driven
by Playwright) against a real server (gunicorn, as ``make run`` starts it).

Screenshots go to test-artifacts/.  Without a chromium these tests are
skipped, except in CI (CI=true), where that is a failure: ``make test``
installs it (see the Makefile).
"""
import re
import time

import pytest

from helpers import PASSWORD, VIEWPORTS, admin_login, assert_clean, live_rows, shot
from live_server import ROOT, LiveServer, prepare

pytestmark = pytest.mark.browser

WITH_SELECTED = "선택한 항목들을..."  # Flask-Admin's "With selected" menu, in its Korean catalog
CONNECTED = '#status[data-state="connected"]'


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live")
    app = prepare(workdir, reviewer=("kim", PASSWORD))
    server = LiveServer(workdir).start()
    server.app = app
    yield server
    server.stop()


def open_chat(ctx, live):
    page = ctx.new_page()
    page.goto(live.url + "/")
    page.wait_for_selector(CONNECTED, timeout=20000)
    return page


def send(page, text, key="Enter"):
    """Type ``text`` and send it; returns the new reply's element."""
    before = page.locator(".msg.bot[data-id]").count()
    page.fill("#input", text)
    page.press("#input", key)
    page.wait_for_function("n => document.querySelectorAll('.msg.bot[data-id]').length > n", arg=before,
                           timeout=20000)
    return page.locator(".msg.bot[data-id]").nth(before)


def bubble_texts(page, who):
    # the bubble's text without the screen-reader label ("나: ", "한마디: ")
    return page.eval_on_selector_all(
        f".msg.{who}:not(.typing) .bubble",
        "els => els.map(e => Array.from(e.childNodes).filter(n => n.nodeType === 3).map(n => n.data).join(''))")


# -- the chat ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["desktop", "mobile"])
def test_send_and_receive(live, context, kind):
    page = open_chat(context(kind), live)
    button = page.locator("#send")
    assert button.is_disabled()  # empty box
    page.fill("#input", "   ")
    assert button.is_disabled()  # only spaces
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORTS[kind]["viewport"]["width"]  # nothing sticks out sideways

    reply = send(page, "안녕하세요")
    assert page.evaluate("window.__typingSeen"), "no typing indicator while the bot computed"
    assert page.locator(".typing").count() == 0
    assert bubble_texts(page, "user") == ["안녕하세요"]
    assert reply.locator(".bubble").inner_text().strip()
    assert page.input_value("#input") == "" and button.is_disabled()

    # Shift+Enter is a new line, Enter sends both lines as one message
    page.fill("#input", "첫 줄")
    page.press("#input", "Shift+Enter")
    page.keyboard.type("둘째 줄")
    assert page.input_value("#input") == "첫 줄\n둘째 줄"
    assert len(bubble_texts(page, "user")) == 1  # nothing sent yet
    before = page.locator(".msg.bot[data-id]").count()
    page.press("#input", "Enter")
    page.wait_for_function("n => document.querySelectorAll('.msg.bot[data-id]').length > n", arg=before)
    assert bubble_texts(page, "user")[-1] == "첫 줄\n둘째 줄"

    # the send button works too (a tap on a phone)
    page.fill("#input", "배고파")
    before = page.locator(".msg.bot[data-id]").count()
    page.locator("#send").click()
    page.wait_for_function("n => document.querySelectorAll('.msg.bot[data-id]').length > n", arg=before)
    # The README's first screen shows the chat.
    page.screenshot(path=str(ROOT / "docs" / f"chat-{'desktop' if kind == 'desktop' else '360x640'}.png"))

    # auto-scroll: the newest reply is in view once the list overflows
    for i in range(4):
        send(page, f"심심해 {i}")
    at_bottom = page.evaluate("(() => { const m = document.getElementById('messages');"
                              " return m.scrollHeight - m.scrollTop - m.clientHeight < 4; })()")
    assert at_bottom
    assert page.evaluate("document.getElementById('messages').scrollHeight > "
                         "document.getElementById('messages').clientHeight")
    assert page.locator(".msg.bot[data-id]").last.is_visible()
    shot(page, f"chat-{kind}")
    assert_clean(page)


def test_korean_ime_composition_never_sends_half_a_syllable(live, context):
    ctx = context()
    page = open_chat(ctx, live)
    page.focus("#input")
    cdp = ctx.new_cdp_session(page)

    def compose(*steps):
        for text in steps:
            cdp.send("Input.imeSetComposition", {"text": text, "selectionStart": len(text), "selectionEnd": len(text)})

    compose("ㅇ", "아", "안")
    cdp.send("Input.insertText", {"text": "안"})  # the IME commits 안
    compose("ㄴ", "녀", "녕")
    page.keyboard.press("Enter")  # Enter while 녕 is still being composed
    time.sleep(0.5)
    assert bubble_texts(page, "user") == []  # nothing sent mid-syllable
    cdp.send("Input.insertText", {"text": "녕"})  # composition ends
    before = page.locator(".msg.bot[data-id]").count()
    page.keyboard.press("Enter")
    page.wait_for_function("n => document.querySelectorAll('.msg.bot[data-id]').length > n", arg=before)
    assert bubble_texts(page, "user") == ["안녕"]
    assert page.input_value("#input") == ""
    assert_clean(page)


def test_history_survives_a_reload_and_stays_in_its_tab(live, context):
    ctx = context("mobile")
    page = open_chat(ctx, live)
    send(page, "날씨 어때")
    send(page, "비 와")
    answers = [t.strip() for t in bubble_texts(page, "bot")]
    page.reload()
    page.wait_for_selector(CONNECTED)
    page.wait_for_function("() => document.querySelectorAll('.msg.bot[data-id]').length === 2", timeout=10000)
    assert bubble_texts(page, "user") == ["날씨 어때", "비 와"]
    assert [t.strip() for t in bubble_texts(page, "bot")] == answers
    shot(page, "chat-mobile-after-reload")
    # after the reload the chat goes on where it was
    send(page, "고마워")
    assert bubble_texts(page, "user") == ["날씨 어때", "비 와", "고마워"]

    other = open_chat(context("mobile"), live)  # another browser: another chat
    time.sleep(0.5)
    assert bubble_texts(other, "user") == []
    assert_clean(page)


def test_open_chat_is_told_when_a_new_model_takes_over(live, context):
    import shutil

    from chatbot import versions

    page = open_chat(context("desktop"), live)
    send(page, "안녕")
    models = live.workdir / "models"
    old = versions.current_dir(models)
    new_name = old.name + "-b"  # the same weights under a new version name
    shutil.copytree(old, models / new_name)
    try:
        versions.activate(models, new_name)
        # The server checks `current` every MODEL_WATCH_SECONDS (2 s).
        page.wait_for_function("(v) => [...document.querySelectorAll('.notice')].some(n => n.textContent.includes(v))",
                               arg=new_name, timeout=15000)
        send(page, "고마워")  # the chat goes on
        assert_clean(page)
    finally:
        versions.activate(models, old.name)


def test_reconnects_after_a_server_restart(live, context):
    page = open_chat(context(), live)
    send(page, "안녕")
    live.stop()
    page.wait_for_selector('#status:not([data-state="connected"])', timeout=15000)
    assert page.locator("#send").is_disabled()
    shot(page, "chat-server-down")
    live.start()
    page.wait_for_selector(CONNECTED, timeout=30000)
    assert page.locator("#status").inner_text() == "연결됨"
    send(page, "다시 안녕")
    assert bubble_texts(page, "user") == ["안녕", "다시 안녕"]  # the page was not reloaded
    # A reconnection tried while the server was down is refused, and Chromium
    # logs that: expected here, and the only error allowed.
    page.console_errors[:] = [e for e in page.console_errors if "ERR_CONNECTION_REFUSED" not in e]
    assert_clean(page)


# -- attacks -------------------------------------------------------------------------

XSS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "<a href=\"javascript:alert(4)\">눌러 보세요</a>",
    "{{7*7}} {% raw %}",
    "<iframe src=\"javascript:alert(5)\"></iframe>",
]


def test_xss_payloads_are_plain_text_in_the_chat_and_the_admin_list(live, context):
    ctx = context()
    page = open_chat(ctx, live)
    for payload in XSS:
        send(page, payload)
    assert bubble_texts(page, "user") == XSS
    messages = page.locator("#messages")
    for tag in ("img", "script", "svg", "a", "iframe"):
        assert messages.locator(tag).count() == 0, tag
    shot(page, "xss-chat")

    admin = admin_login(context(), live)
    html = admin.content()
    for payload in XSS:
        assert admin.get_by_text(payload, exact=True).count() >= 1, payload
    table = admin.locator("table.model-list")
    for tag in ("img", "script", "svg", "iframe"):
        assert table.locator(tag).count() == 0, tag
    assert table.locator('a[href^="javascript:"]').count() == 0
    assert "49" not in admin.locator("table.model-list td.col-question").all_inner_texts()
    shot(admin, "xss-admin-list")
    row_id = [r.id for r in live_rows(live) if r.question == XSS[0]][0]
    for path in (f"/admin/exchange/edit/?id={row_id}", f"/admin/exchange/details/?id={row_id}"):
        admin.goto(live.url + path)
        assert admin.get_by_text(XSS[0], exact=True).count() >= 1
        assert admin.locator("main img, .container img, .container-fluid img").count() == 0
        assert_clean(admin)
    assert ctx.dialogs == [] and admin.context.dialogs == []
    assert_clean(page)
    assert "onerror=alert(1)>" not in html.replace("&lt;img src=x onerror=alert(1)&gt;", "")


@pytest.mark.parametrize("path", ["/admin/", "/admin/exchange/", "/admin/exchange/edit/?id=1"])
def test_admin_pages_redirect_to_login_when_logged_out(live, context, path):
    page = context().new_page()
    page.goto(live.url + path)
    assert re.search(r"/login\?next=", page.url), page.url
    assert page.locator("#username").is_visible() and page.locator("#password").is_visible()
    assert_clean(page)


def test_thumbs_down_reaches_the_top_of_the_review_queue(live, context):
    page = open_chat(context("mobile"), live)
    first = send(page, "뭐 먹지")
    send(page, "피곤해")
    first.locator(".fb-down").click()
    page.wait_for_selector('.msg.bot[data-feedback="down"]')
    assert first.locator(".fb-down").get_attribute("aria-pressed") == "true"
    assert first.locator(".fb-up").get_attribute("aria-pressed") == "false"
    shot(page, "chat-mobile-thumbs-down")
    row_id = int(first.get_attribute("data-id"))
    assert [r.feedback for r in live_rows(live) if r.id == row_id] == ["down"]

    admin = admin_login(context(), live)
    top = admin.locator("table.model-list tbody tr").first
    assert top.locator("td.col-question").inner_text().strip() == "뭐 먹지"
    assert top.locator("td.col-feedback").inner_text().strip() == "👎"
    shot(admin, "admin-review-queue")
    assert_clean(admin)


def test_admin_works_under_the_csp(live, context):
    """Filters and bulk actions need Flask-Admin's scripts: they must run with
    the policy on, and nothing may be blocked."""
    chat = open_chat(context(), live)
    send(chat, "검토할 질문")
    admin = admin_login(context(), live)
    admin.get_by_text("필터 추가").click()
    admin.locator("a.dropdown-item.filter", has_text="상태").click()
    admin.wait_for_selector("table.filters tr")
    assert admin.url.endswith("/admin/exchange/")  # the menu did not navigate
    admin.goto(live.url + "/admin/exchange/")
    row = admin.locator("table.model-list tbody tr", has_text="검토할 질문").first
    row.locator("input.action-checkbox").check()
    admin.get_by_text(WITH_SELECTED).click()
    admin.context.accept_dialogs = True
    admin.get_by_role("link", name="검토 완료로 표시").click()
    admin.wait_for_selector(".alert-success")
    assert admin.context.dialogs == ["선택한 대화를 검토 완료로 표시할까요?"]  # the confirmation ran
    assert "검토 완료" in admin.locator(".alert-success").inner_text()
    assert [r.status for r in live_rows(live) if r.question == "검토할 질문"] == ["reviewed"]
    shot(admin, "admin-bulk-action")
    assert_clean(admin)
