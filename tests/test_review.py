"""The review side: reviewer login and the /admin screens.

Uses the fixtures of tests/conftest.py: ``app`` (real SQLite file, migrations
applied, CSRF on), ``client``, ``reviewer``, ``auth`` and ``logged_in``.
"""
import re
from datetime import datetime

import pytest

from chatbot import create_app
from chatbot.database import (NEEDS_DELETION, REVIEWED, UNREVIEWED, Exchange, Reviewer)
from chatbot.extensions import db
from chatbot.auth import safe_next
from helpers import PASSWORD, add_exchange, get_row, token_in

LOGIN_FAILED = "아이디 또는 비밀번호가 올바르지 않습니다"


def list_page(client, query=""):
    response = client.get("/admin/exchange/" + query)
    assert response.status_code == 200
    return response.get_data(as_text=True)


# -- login -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/admin/", "/admin/exchange/", "/admin/exchange/edit/?id=1",
                                  "/admin/exchange/details/?id=1"])
def test_admin_pages_redirect_to_login_when_logged_out(client, path):
    response = client.get(path)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("/login?next=")
    # the login page sends the reviewer back where they were going
    assert client.get(location).status_code == 200


def test_admin_without_slash_also_ends_at_login(client):
    response = client.get("/admin", follow_redirects=True)
    assert response.request.path == "/login"


def test_login_page_is_korean_and_has_csrf_token(client):
    html = client.get("/login").get_data(as_text=True)
    assert "아이디" in html and "비밀번호" in html
    assert token_in(html)
    # Nothing loaded from elsewhere (a CSRF token may spell "cdn" by chance).
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html) and "https://" not in html


@pytest.mark.parametrize("name,password", [("kim", "wrong password"), ("nobody", PASSWORD)])
def test_wrong_password_or_unknown_user_fails(client, reviewer, auth, name, password):
    response = auth.login(name, password)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert LOGIN_FAILED in html
    assert password not in html  # the password is not echoed back
    assert client.get("/admin/").status_code == 302


def test_login_works(client, reviewer, auth):
    response = auth.login()
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    html = client.get("/admin/").get_data(as_text=True)
    assert "한마디 검토" in html
    assert "kim" in html  # shown in the navigation bar


def test_login_goes_to_next(reviewer, auth):
    response = auth.login(next_url="/admin/exchange/?page=1")
    assert response.headers["Location"] == "/admin/exchange/?page=1"


@pytest.mark.parametrize("bad", ["https://evil.example/", "//evil.example/", "/\\evil.example",
                                 "javascript:alert(1)", "admin", "/admin\r\nX: y"])
def test_login_ignores_unsafe_next(reviewer, auth, bad):
    response = auth.login(next_url=bad)
    assert response.headers["Location"] == "/admin/"


def test_safe_next():
    assert safe_next("/admin/exchange/?page=2") == "/admin/exchange/?page=2"
    for bad in [None, "", "http://x", "//x", "/\\x", "x/y", "/a\nb", "\\\\x"]:
        assert safe_next(bad) is None


def test_login_without_csrf_token_is_refused(client, reviewer):
    client.get("/login")
    response = client.post("/login", data={"username": "kim", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_logout_needs_post_with_csrf(logged_in):
    client = logged_in
    # GET only asks; it does not log out
    html = client.get("/logout").get_data(as_text=True)
    assert "로그아웃" in html
    assert client.get("/admin/").status_code == 200
    # POST without the token is refused
    assert client.post("/logout").status_code == 400
    assert client.get("/admin/").status_code == 200
    response = client.post("/logout", data={"csrf_token": token_in(html)})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 302


# -- the list ------------------------------------------------------------------

def test_list_is_newest_first_and_escapes_user_text(app, logged_in):
    add_exchange(app, "오래된 질문", minutes_ago=60)
    add_exchange(app, "<script>alert('x')</script>", answer="<b>굵게</b>", minutes_ago=0)
    add_exchange(app, "중간 질문", minutes_ago=30)
    html = list_page(logged_in)
    assert html.index("&lt;script&gt;") < html.index("중간 질문") < html.index("오래된 질문")
    assert "<script>alert(" not in html
    assert "<b>굵게</b>" not in html and "&lt;b&gt;굵게&lt;/b&gt;" in html
    assert "미검토" in html  # status shown with its Korean label
    for heading in ["질문", "답변", "수정한 답변", "상태", "경로", "모델 버전", "세션", "검토자"]:
        assert heading in html


def test_details_view_escapes_user_text(app, logged_in):
    row_id = add_exchange(app, "<script>alert(1)</script>", answer="<img src=x onerror=alert(1)>")
    html = logged_in.get(f"/admin/exchange/details/?id={row_id}").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_login_redirect_says_why(client):
    html = client.get("/admin/exchange/", follow_redirects=True).get_data(as_text=True)
    assert "로그인이 필요합니다." in html


def test_admin_assets_are_served_locally(logged_in):
    html = list_page(logged_in)
    urls = re.findall(r'<(?:link|script)[^>]*(?:href|src)="([^"]+)"', html)
    assert urls
    # every asset is served by the app itself (same origin), none from a CDN
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    for url in urls:
        assert logged_in.get(url).status_code == 200, url


def test_list_pages_are_not_cached_or_framed(logged_in):
    response = logged_in.get("/admin/exchange/")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_filter_by_status(app, logged_in):
    add_exchange(app, "아직 안 본 질문")
    add_exchange(app, "검토한 질문", status=REVIEWED)
    add_exchange(app, "지울 질문", status=NEEDS_DELETION)
    html = list_page(logged_in, "?flt0_0=" + REVIEWED)
    assert "검토한 질문" in html
    assert "아직 안 본 질문" not in html and "지울 질문" not in html


def test_filter_by_created_at_range(app, logged_in):
    with app.app_context():
        for question, when in [("사월 말", datetime(2024, 4, 30, 23, 59)),
                               ("오월 첫날", datetime(2024, 5, 1, 0, 0)),
                               ("오월 이튿날 밤", datetime(2024, 5, 2, 23, 30)),
                               ("오월 사흗날", datetime(2024, 5, 3, 0, 0))]:
            db.session.add(Exchange(question=question, question_key=question, answer="답", created_at=when))
        db.session.commit()
    html = list_page(logged_in, "?flt0_1=2024-05-01+to+2024-05-02")
    assert "오월 첫날" in html and "오월 이튿날 밤" in html  # both days are included
    assert "사월 말" not in html and "오월 사흗날" not in html


@pytest.mark.parametrize("term,found", [("날씨", "날씨 질문"), ("맑음", "답변 검색"),
                                        ("고친말", "수정 검색")])
def test_search_covers_question_answer_and_correction(app, logged_in, term, found):
    add_exchange(app, "날씨 질문", answer="몰라요")
    add_exchange(app, "답변 검색", answer="오늘은 맑음")
    add_exchange(app, "수정 검색", answer="원래", corrected_answer="고친말이에요")
    add_exchange(app, "관계없는 질문", answer="관계없는 답")
    html = list_page(logged_in, "?search=" + term)
    assert found in html
    assert "관계없는 질문" not in html
    for other in {"날씨 질문", "답변 검색", "수정 검색"} - {found}:
        assert other not in html


def test_index_counts_statuses(app, logged_in):
    add_exchange(app, "하나")
    add_exchange(app, "둘", status=REVIEWED)
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert "미검토" in html and "검토 완료" in html and "삭제 필요" in html


# -- bulk actions ---------------------------------------------------------------

def post_action(client, action, ids, with_token=True, token=None):
    data = {"action": action, "rowid": [str(i) for i in ids], "url": "/admin/exchange/"}
    if with_token:
        data["csrf_token"] = token or token_in(list_page(client))
    return client.post("/admin/exchange/action/", data=data)


@pytest.mark.parametrize("action,start,status,label", [
    ("mark_reviewed", UNREVIEWED, REVIEWED, "검토 완료"),
    ("mark_needs_deletion", UNREVIEWED, NEEDS_DELETION, "삭제 필요"),
    ("mark_unreviewed", REVIEWED, UNREVIEWED, "미검토"),
])
def test_bulk_action_marks_selected_rows(app, logged_in, action, start, status, label):
    chosen = [add_exchange(app, f"고른 질문 {i}", status=start) for i in range(2)]
    other = add_exchange(app, "고르지 않은 질문", status=start)
    html = list_page(logged_in)
    assert "검토 완료로 표시" in html and "삭제 필요로 표시" in html and "미검토로 되돌리기" in html

    response = post_action(logged_in, action, chosen)
    assert response.status_code == 302
    for row_id in chosen:
        row = get_row(app, row_id)
        assert row.status == status
        assert row.reviewer == "kim"
        assert row.reviewed_at is not None
    untouched = get_row(app, other)
    assert untouched.status == start and untouched.reviewer is None
    message = logged_in.get(response.headers["Location"]).get_data(as_text=True)
    assert f"2건을 &#39;{label}&#39;(으)로 표시했습니다." in message


def test_bulk_action_counts_only_rows_that_changed(app, logged_in):
    new = add_exchange(app, "새 질문")
    done = add_exchange(app, "이미 검토", status=REVIEWED, reviewer="lee",
                        reviewed_at=datetime(2024, 1, 1))
    response = post_action(logged_in, "mark_reviewed", [new, done])
    html = logged_in.get(response.headers["Location"]).get_data(as_text=True)
    assert "1건을" in html and "1건은 그대로" in html
    assert get_row(app, done).reviewer == "lee"  # the earlier review is kept


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_bulk_action_without_valid_csrf_token_changes_nothing(app, logged_in, token):
    row_id = add_exchange(app, "질문")
    response = post_action(logged_in, "mark_needs_deletion", [row_id], with_token=token is not None, token=token)
    assert response.status_code == 400
    row = get_row(app, row_id)
    assert row.status == UNREVIEWED and row.reviewer is None


def test_action_form_checks_csrf_itself(app, logged_in):
    """Even with CSRFProtect's automatic check off, the admin form refuses a forged POST."""
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    row_id = add_exchange(app, "질문")
    post_action(logged_in, "mark_needs_deletion", [row_id], with_token=False)
    assert get_row(app, row_id).status == UNREVIEWED
    post_action(logged_in, "mark_needs_deletion", [row_id])
    assert get_row(app, row_id).status == NEEDS_DELETION


def test_bulk_action_needs_login(app, client, reviewer):
    row_id = add_exchange(app, "질문")
    token = token_in(client.get("/login").get_data(as_text=True))
    response = post_action(client, "mark_reviewed", [row_id], token=token)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert get_row(app, row_id).status == UNREVIEWED


# -- the edit form ----------------------------------------------------------------

def test_edit_form_saves_correction_and_status(app, logged_in):
    row_id = add_exchange(app, "<i>질문</i>", answer="틀린 답")
    page = logged_in.get(f"/admin/exchange/edit/?id={row_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "&lt;i&gt;질문&lt;/i&gt;" in html and "<i>질문</i>" not in html
    assert 'name="corrected_answer"' in html and 'name="status"' in html
    assert 'name="question"' not in html and 'name="answer"' not in html

    response = logged_in.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token_in(html), "corrected_answer": "  고친 답  ", "status": REVIEWED,
        # not in the form: must be ignored
        "question": "바뀐 질문", "answer": "바뀐 답", "reviewer": "someone-else",
    })
    assert response.status_code == 302
    row = get_row(app, row_id)
    assert row.corrected_answer == "고친 답"
    assert row.status == REVIEWED
    assert row.reviewer == "kim" and row.reviewed_at is not None
    assert row.question == "<i>질문</i>" and row.answer == "틀린 답"
    assert row.final_answer == "고친 답"


def test_edit_without_status_change_keeps_review_record(app, logged_in):
    row_id = add_exchange(app, "질문", status=REVIEWED, reviewer="lee", reviewed_at=datetime(2024, 1, 1))
    html = logged_in.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    logged_in.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token_in(html), "corrected_answer": "", "status": REVIEWED})
    row = get_row(app, row_id)
    assert row.corrected_answer is None  # blank means "no correction"
    assert row.reviewer == "lee" and row.reviewed_at == datetime(2024, 1, 1)


def test_edit_without_csrf_token_changes_nothing(app, logged_in):
    row_id = add_exchange(app, "질문")
    response = logged_in.post(f"/admin/exchange/edit/?id={row_id}",
                              data={"corrected_answer": "가짜", "status": NEEDS_DELETION})
    assert response.status_code == 400
    row = get_row(app, row_id)
    assert row.status == UNREVIEWED and row.corrected_answer is None


def test_edit_rejects_unknown_status(app, logged_in):
    row_id = add_exchange(app, "질문")
    html = logged_in.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    logged_in.post(f"/admin/exchange/edit/?id={row_id}",
                   data={"csrf_token": token_in(html), "status": "bogus"})
    assert get_row(app, row_id).status == UNREVIEWED


def test_no_create_and_no_hard_delete(app, logged_in):
    row_id = add_exchange(app, "질문")
    html = list_page(logged_in)
    assert "/admin/exchange/new/" not in html and "/admin/exchange/delete/" not in html
    assert logged_in.get("/admin/exchange/new/").status_code == 302
    logged_in.post("/admin/exchange/delete/", data={"csrf_token": token_in(html), "id": str(row_id)})
    assert get_row(app, row_id) is not None


# -- app factory ----------------------------------------------------------------

def test_create_app_twice_gives_independent_admins(tmp_path, app):
    other = create_app({"TESTING": True, "SECRET_KEY": "another",
                        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "other.db"),
                        "MODEL_DIR": str(tmp_path / "models2")})
    assert other.extensions["review_admin"] is not app.extensions["review_admin"]
    assert other.test_client().get("/admin/exchange/").status_code == 302
    with other.app_context():
        db.engine.dispose()


def test_reviewer_loader_takes_only_a_current_session_token(app, reviewer):
    import time

    from flask import session

    from chatbot.auth import LOGIN_TIME_KEY, _load_reviewer
    with app.test_request_context():
        session[LOGIN_TIME_KEY] = time.time()
        assert _load_reviewer("not-a-token") is None
        assert _load_reviewer(str(reviewer.id)) is None  # the id alone is not a login
        assert _load_reviewer(None) is None
        loaded = _load_reviewer(reviewer.session_token)
        assert isinstance(loaded, Reviewer) and loaded.username == "kim"


# -- 👍/👎 and the review queue ----------------------------------------------------

def test_list_puts_thumbs_down_first_then_unreviewed_then_newest(app, logged_in):
    add_exchange(app, "Q-new-unreviewed", minutes_ago=0)
    add_exchange(app, "Q-old-down", minutes_ago=300, feedback="down")
    add_exchange(app, "Q-reviewed-down", minutes_ago=1, feedback="down", status=REVIEWED)
    add_exchange(app, "Q-up-unreviewed", minutes_ago=10, feedback="up")
    add_exchange(app, "Q-reviewed", minutes_ago=2, status=REVIEWED)
    add_exchange(app, "Q-newer-down", minutes_ago=200, feedback="down")
    html = list_page(logged_in)
    expected = ["Q-newer-down", "Q-old-down", "Q-new-unreviewed", "Q-up-unreviewed", "Q-reviewed-down", "Q-reviewed"]
    positions = [html.index(q + "<") for q in expected]
    assert positions == sorted(positions), list(zip(expected, positions))
    assert "👎" in html and "👍" in html and "평가" in html


def test_a_column_heading_still_sorts_by_that_column(app, logged_in):
    add_exchange(app, "Q-down", minutes_ago=100, feedback="down")
    add_exchange(app, "Q-newest", minutes_ago=0)
    html = list_page(logged_in)
    link = re.search(r'href="([^"]*sort=\d+[^"]*)"[^>]*>\s*생성 시각', html).group(1).replace("&amp;", "&")
    sorted_html = list_page(logged_in, link[len("/admin/exchange/"):])
    if sorted_html.index("Q-newest<") > sorted_html.index("Q-down<"):  # ascending first: click again
        link = re.search(r'href="([^"]*sort=\d+[^"]*)"[^>]*>\s*생성 시각', sorted_html).group(1).replace("&amp;", "&")
        sorted_html = list_page(logged_in, link[len("/admin/exchange/"):])
    assert sorted_html.index("Q-newest<") < sorted_html.index("Q-down<")
    ascending = list_page(logged_in, "?sort=8")
    assert ascending.index("Q-down<") < ascending.index("Q-newest<")


def test_filter_by_feedback(app, logged_in):
    add_exchange(app, "싫어요 받은 질문", feedback="down")
    add_exchange(app, "좋아요 받은 질문", feedback="up")
    add_exchange(app, "평가 없는 질문")
    html = list_page(logged_in, "?flt0_2=down")
    assert "싫어요 받은 질문" in html
    assert "좋아요 받은 질문" not in html and "평가 없는 질문" not in html


def test_filter_by_route_tells_written_replies_from_training_answers(app, logged_in):
    add_exchange(app, "모델이 쓴 답의 질문", route="model")
    add_exchange(app, "학습 데이터로 답한 질문", route="known")
    html = list_page(logged_in, "?flt0_3=model")
    assert "모델이 쓴 답의 질문" in html and "학습 데이터로 답한 질문" not in html
    html = list_page(logged_in, "?flt0_3=known")
    assert "학습 데이터로 답한 질문" in html and "모델이 쓴 답의 질문" not in html
    assert "학습 데이터 답변" in html  # the route column's label


def test_index_counts_unreviewed_thumbs_down(app, logged_in):
    add_exchange(app, "하나", feedback="down")
    add_exchange(app, "둘", feedback="down", status=REVIEWED)
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert "👎 받은 미검토" in html
    link = re.search(r'href="(/admin/exchange/\?[^"]*flt1_2=down[^"]*)"', html).group(1).replace("&amp;", "&")
    listed = list_page(logged_in, link[len("/admin/exchange/"):])
    assert "하나" in listed and ">둘<" not in listed
