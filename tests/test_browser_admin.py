"""The models page and the review queue in a real browser, under the CSP:
retrain with live progress over Socket.IO, rollback, and the keyboard flow
of the review queue.  Skipped without chromium like tests/test_browser.py."""

import pytest
import sqlalchemy as sa

from helpers import PAIRS, PASSWORD, admin_login, assert_clean, shot
from live_server import ROOT, LiveServer, prepare

pytestmark = pytest.mark.browser

TINY_ARGS = "--max-steps 2 --epochs 2 --threads 1 --dev-percent 20"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live-admin")
    starter = workdir / "starter.csv"
    starter.write_text("Q,A\n" + "".join(f"{q},{a}\n" for q, a in PAIRS), encoding="utf-8")
    app = prepare(workdir, reviewer=("kim", PASSWORD), STARTER_PAIRS=str(starter))
    # The queue's groups by meaning are made in the background: these tests'
    # queues group by exact key (test_the_queue_groups_by_meaning... has its own server).
    server = LiveServer(workdir, env={"STARTER_PAIRS": str(starter), "RETRAIN_ARGS": TINY_ARGS,
                                      "QUEUE_MEANING_GROUPS": "0"}).start()
    server.app = app
    server.models = workdir / "models"
    yield server
    server.stop()


GROUP_CUT = "0.89"  # 배고파, 너무 배고프다 and 배고파 죽겠어 are one group; 심심해 is not (tests/test_grouping.py)


@pytest.fixture
def grouping_live(tmp_path):
    """A server of its own whose queue groups by meaning, in the background, as `make serve` does."""
    app = prepare(tmp_path, reviewer=("kim", PASSWORD), QUEUE_MEANING_GROUPS=True, QUEUE_GROUP_SIMILARITY=0.89)
    server = LiveServer(tmp_path, env={"QUEUE_GROUP_SIMILARITY": GROUP_CUT}).start()
    server.app = app
    yield server
    server.stop()


def test_retrain_button_shows_live_progress_and_rollback_works(live, context):
    import os

    from chatbot import retrain

    first = os.readlink(live.models / "current")
    page = admin_login(context(), live, "/admin/models/")
    assert page.locator("#model-versions tbody tr").count() == 1
    page.wait_for_function("() => document.querySelector('[data-field=\"state_label\"]').textContent.length > 0")
    page.click("#retrain-start")
    # Progress arrives over Socket.IO; when the run ends the page reloads with the new version.
    page.wait_for_function(
        "() => document.querySelectorAll('#model-versions tbody tr').length === 2"
        " && /적용됨/.test(document.querySelector('[data-field=\"state_label\"]').textContent)", timeout=120000)
    assert retrain.read_status(live.models)["state"] == retrain.ACTIVATED
    new = os.readlink(live.models / "current")
    assert new != first
    assert page.locator("tr.table-success code").inner_text() == new
    assert "new model:" in page.locator("#retrain-log").text_content()
    shot(page, "admin-models")

    page.locator(f'tr[data-version="{first}"] button', has_text="적용").click()
    page.wait_for_selector(".alert-success")
    assert os.readlink(live.models / "current") == first
    assert page.locator("tr.table-success code").inner_text() == first
    assert_clean(page)


def test_review_queue_by_keyboard(live, context):
    from chatbot import morph
    from chatbot.database import REVIEWED, Exchange
    from chatbot.extensions import db

    with live.app.app_context():
        for q in ("주말에 뭐 하지?", "주말에 뭐 하지", "주말 뭐 하지"):
            db.session.add(Exchange(question=q, question_key=morph.question_key(q), answer="몰라요"))
        db.session.commit()
        db.engine.dispose()
    page = admin_login(context(), live, "/admin/queue/")
    page.click("#queue-next")
    page.wait_for_selector("#queue-correction:focus")
    # autofocus happens while the page is parsed, maybe before review.js has
    # run and listens for Ctrl+Enter: wait for the scripts too.
    page.wait_for_load_state("load")
    page.keyboard.type("영화 보러 가요.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".alert-success")
    with live.app.app_context():
        rows = db.session.scalars(sa.select(Exchange).where(Exchange.question.like("주말%"))).all()
        assert {(r.status, r.corrected_answer, r.reviewer) for r in rows} == {(REVIEWED, "영화 보러 가요.", "kim")}
        db.engine.dispose()
    shot(page, "admin-queue-after")
    assert_clean(page)


@pytest.mark.parametrize("kind", ["desktop", "mobile"])
def test_a_suggested_answer_is_taken_with_one_click(live, context, kind):
    """The edit page of an exchange offers the answers of the nearest
    questions (chatbot/suggest.py); a click on one puts it in the correction
    box under the CSP (review.js), and saving stores it.  Screenshots:
    docs/suggestions-desktop.png (1280x800), docs/suggestions-360x640.png."""
    from chatbot import morph
    from chatbot.database import REVIEWED, Exchange
    from chatbot.extensions import db

    # helpers.PAIRS: 배고파 -> 맛있는 거 드세요.  One question per kind: the
    # first one's saved correction is a suggestion for the second.
    question = {"desktop": "배가 너무 고파요", "mobile": "배고파 죽겠어요"}[kind]
    with live.app.app_context():
        row = Exchange(question=question, question_key=morph.question_key(question), answer="몰라요")
        db.session.add(row)
        db.session.commit()
        row_id = row.id
        db.engine.dispose()
    page = admin_login(context(kind), live, f"/admin/exchange/edit/?id={row_id}")
    buttons = page.locator("#suggestions [data-suggestion]")
    buttons.nth(2).wait_for()  # fetched after the page loads
    assert buttons.count() == 3
    assert "맛있는 거 드세요." in [buttons.nth(i).get_attribute("data-suggestion") for i in range(3)]
    page.locator('[data-suggestion="맛있는 거 드세요."]').click()
    assert page.input_value("#corrected_answer") == "맛있는 거 드세요."
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ROOT / "docs" / f"suggestions-{'desktop' if kind == 'desktop' else '360x640'}.png"),
                    full_page=kind == "desktop")
    page.select_option("#status", REVIEWED, force=True)  # hidden behind select2
    page.locator("form.admin-form input[type=submit], form.admin-form button[type=submit]").first.click()
    page.wait_for_selector(".alert-success")
    with live.app.app_context():
        saved = db.session.get(Exchange, row_id)
        assert (saved.corrected_answer, saved.status, saved.reviewer) == ("맛있는 거 드세요.", REVIEWED, "kim")
        db.engine.dispose()
    assert_clean(page)


def test_the_queues_group_page_fetches_suggestions_and_a_click_takes_one(live, context):
    """The group page (a heavy-work page) fetches its suggestions after it
    loads (review.js, JSON, built as text); a click fills the group's
    correction box, and Ctrl+Enter saves it for the whole group."""
    from chatbot import morph
    from chatbot.database import REVIEWED, Exchange
    from chatbot.extensions import db

    with live.app.app_context():
        for q in ("배 많이 고파", "배 많이 고파!"):
            db.session.add(Exchange(question=q, question_key=morph.question_key(q), answer="몰라요"))
        db.session.commit()
        key = morph.question_key("배 많이 고파")
        db.engine.dispose()
    page = admin_login(context(), live, "/admin/queue/")
    page.goto(f"{live.url}/admin/queue/group?key={key}")
    button = page.locator('#suggestions [data-suggestion="맛있는 거 드세요."]')
    button.wait_for()
    assert page.locator("#suggestions [data-suggestion]").count() == 3
    assert page.locator("#suggestions").is_visible()
    button.click()
    assert page.input_value("#queue-correction") == "맛있는 거 드세요."
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".alert-success")
    with live.app.app_context():
        rows = db.session.scalars(sa.select(Exchange).where(Exchange.question_key == key)).all()
        assert {(r.status, r.corrected_answer) for r in rows} == {(REVIEWED, "맛있는 거 드세요.")}
        db.engine.dispose()
    assert_clean(page)


def test_suggested_answers_are_shown_as_text_never_as_html(live, context):
    """Whatever an answer holds (a reviewer's or a training pair's, fetched
    as JSON), review.js puts it in as text: here the JSON is the server's
    reply replaced by one whose answer is markup and a script."""
    import json

    from chatbot import morph
    from chatbot.database import Exchange
    from chatbot.extensions import db

    evil = '<img src=x onerror="window.__pwned=1"><b>굵게</b>'
    with live.app.app_context():
        row = Exchange(question="배고파요", question_key=morph.question_key("배고파요"), answer="몰라요")
        db.session.add(row)
        db.session.commit()
        row_id = row.id
        db.engine.dispose()
    ctx = context()
    ctx.route("**/admin/exchange/suggest/**", lambda route: route.fulfill(
        content_type="application/json", body=json.dumps({"suggestions": [
            {"answer": evil, "similarity": 0.5, "source": "reviewed", "source_label": "<i>검토</i>",
             "question": "<u>질문</u>"}]})))
    page = admin_login(ctx, live, f"/admin/exchange/edit/?id={row_id}")
    button = page.locator("#suggestions [data-suggestion]")
    button.wait_for()
    assert button.get_attribute("data-suggestion") == evil
    assert page.locator("#suggestions .suggestion-answer").inner_text() == evil
    assert page.locator("#suggestions img, #suggestions b, #suggestions i, #suggestions u").count() == 0
    assert "<i>검토</i> · 질문: <u>질문</u>" in page.locator("#suggestions li small").inner_text()
    button.click()
    assert page.input_value("#corrected_answer") == evil
    assert page.evaluate("window.__pwned") is None
    assert_clean(page)


@pytest.mark.parametrize("kind", ["desktop", "mobile"])
def test_the_queue_groups_by_meaning_and_a_group_is_split_and_corrected_with_a_suggestion(grouping_live, context,
                                                                                          kind):
    """The server groups the questions by meaning in the background (a queue
    page nudges it); the group page lists its questions, 분리 takes one out
    (audited), the page says what the correction would change for the
    other unreviewed questions, a suggested answer is taken with one click
    and Ctrl+Enter saves it for the rest of the group.  Screenshots at 1280x800 and
    360x640: docs/queue-groups-*.png (the queue), docs/queue-group-*.png
    (a group, its questions and the suggestions), docs/queue-group-split-*.png
    (after the split: the correction would now reach the question split off)."""
    from chatbot import morph
    from chatbot.database import REVIEWED, UNREVIEWED, Exchange, ReviewAudit
    from chatbot.extensions import db

    live = grouping_live
    size = "desktop" if kind == "desktop" else "360x640"
    with live.app.app_context():
        for q in ("배고파", "배고파", "너무 배고프다", "배고파 죽겠어", "심심해"):
            db.session.add(Exchange(question=q, question_key=morph.question_key(q), answer="몰라요"))
        db.session.commit()
        db.engine.dispose()
    page = admin_login(context(kind), live, "/admin/queue/")
    first = page.locator("#queue-groups tbody tr").first
    for _ in range(60):  # the server groups them in the background, nudged by the page
        if "너무 배고프다" in first.inner_text():
            break
        page.wait_for_timeout(500)
        page.reload()
    assert page.locator("#queue-groups tbody tr").count() == 2
    assert "배고파 죽겠어" in first.inner_text() and "(2)" in first.inner_text()  # 배고파, asked twice
    page.screenshot(path=str(ROOT / "docs" / f"queue-groups-{size}.png"), full_page=kind == "desktop")

    first.locator("a", has_text="검토").click()
    page.wait_for_selector("#queue-group-keys")
    assert page.locator("#queue-group-keys tbody tr").count() == 3
    page.locator("#suggestions [data-suggestion]").first.wait_for()
    page.locator("#reach").wait_for()  # what the correction would change: 심심해 is not near
    assert "바로 바뀌지 않습니다" in page.locator("#reach").inner_text()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ROOT / "docs" / f"queue-group-{size}.png"), full_page=kind == "desktop")
    page.locator("#queue-group-keys tbody tr", has_text="너무 배고프다").locator("button", has_text="분리").click()
    page.wait_for_selector(".alert-success")
    assert page.locator("#queue-group-keys tbody tr").count() == 2
    assert "너무 배고프다" not in page.locator("#queue-group-form table").inner_text()
    # Asked again for the rest of the group: its correction would now also
    # answer the question split off (nearest the reviewed 배고파).
    page.locator("#reach li").first.wait_for()
    assert "너무 배고프다" in page.locator("#reach li").first.inner_text()
    page.locator("#reach").scroll_into_view_if_needed()  # below the fold on a phone
    page.screenshot(path=str(ROOT / "docs" / f"queue-group-split-{size}.png"), full_page=kind == "desktop")

    button = page.locator('#suggestions [data-suggestion="맛있는 거 드세요."]')  # helpers.PAIRS: 배고파
    button.wait_for()
    button.click()
    assert page.input_value("#queue-correction") == "맛있는 거 드세요."
    page.locator("#queue-correction").press("Control+Enter")
    page.wait_for_selector(".alert-success")
    with live.app.app_context():
        rows = {(r.question, r.status, r.corrected_answer) for r in db.session.scalars(sa.select(Exchange))}
        assert rows == {("배고파", REVIEWED, "맛있는 거 드세요."), ("배고파 죽겠어", REVIEWED, "맛있는 거 드세요."),
                        ("너무 배고프다", UNREVIEWED, None), ("심심해", UNREVIEWED, None)}
        actions = db.session.scalars(sa.select(ReviewAudit.action).order_by(ReviewAudit.id)).all()
        assert actions == ["split", "group", "group", "group"]
        db.engine.dispose()
    assert_clean(page)
    assert "Traceback" not in live.log()  # the nudge from the page's heavy-work thread reached the loop
