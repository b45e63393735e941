"""Access control: every admin screen asks for a login, by itself."""
import pytest

from chatbot import analytics_admin, api_keys_admin, export_admin, versions_admin, queue_admin

# Everything a visitor may reach without logging in; every other URL the app
# serves must send them to the login page.
# The KakaoTalk skill answers only Kakao, at a secret URL (404 without it:
# tests/test_kakao.py); the widget is for any visitor of a listed site.
PUBLIC_ENDPOINTS = {"chat.index", "chat.favicon", "static", "admin.static", "auth.login", "auth.logout",
                    "api.openapi_document", "kakao.skill", "widget.script", "widget.embed"}
# The REST API has no login: it asks for a key (401) instead (tests/test_api.py).
API_KEY_ENDPOINTS = {"api.post_message", "api.post_feedback"}
ARGUMENTS = {"export_type": "csv", "version": "20260101-000000", "filename": "x", "row_id": 1, "table": "periods"}


def test_every_private_endpoint_sends_a_logged_out_visitor_to_the_login_page(make_app):
    # CSRF off, so that a POST reaches the view's own access check rather than
    # being refused earlier for its missing token.
    app = make_app(WTF_CSRF_ENABLED=False)
    client = app.test_client()
    checked = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        url = rule.build({name: ARGUMENTS[name] for name in rule.arguments})[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, data={"id": "1", "key": "x"})
            checked.append((method, url))
            if rule.endpoint in API_KEY_ENDPOINTS:
                assert response.status_code == 401, (method, url, response.status_code)
                continue
            assert response.status_code in (302, 403), (method, url, response.status_code)
            if response.status_code == 302:
                assert response.headers["Location"].startswith("/login?next="), (method, url)
    # the walk really covered the screens that change things
    for method, url in [("POST", "/admin/queue/purge"), ("POST", "/admin/queue/import"),
                        ("POST", "/admin/models/activate"), ("POST", "/admin/models/delete"),
                        ("POST", "/admin/models/retrain"), ("POST", "/admin/exchange/action/"),
                        ("POST", "/admin/api-keys/create"), ("POST", "/admin/api-keys/revoke"),
                        ("GET", "/admin/export/"), ("POST", "/admin/export/"),
                        ("POST", "/api/v1/messages"), ("POST", "/api/v1/messages/1/feedback"),
                        ("GET", "/admin/analytics/"), ("GET", "/admin/analytics/periods.csv")]:
        assert (method, url) in checked
    assert len(checked) > 30


@pytest.mark.parametrize("view_class", [queue_admin.QueueView, versions_admin.VersionsView,
                                        api_keys_admin.ApiKeysView, export_admin.ExportView,
                                        analytics_admin.AnalyticsView])
def test_queue_and_model_views_check_access_themselves(app, view_class):
    """Not only when some other module mixes a check in."""
    extra = {"group_filter_arg": "flt0_8"} if view_class is analytics_admin.AnalyticsView else {}
    with app.test_request_context("/admin/"):
        assert view_class(name="x", endpoint="x", **extra).is_accessible() is False
