"""The statistics page in a real browser, under the admin's CSP, on a
desktop and on a 360 px phone, with a simulated month of chats
(bench/simulate.py).  Saves the screenshots the README links to.
Skipped without chromium like tests/test_browser.py."""
import pytest

from bench import simulate
from helpers import PASSWORD, admin_login, assert_clean
from live_server import ROOT, LiveServer, prepare

pytestmark = pytest.mark.browser

DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live-analytics")
    app = prepare(workdir, with_model=False, reviewer=("kim", PASSWORD))
    assert simulate.simulate(app, days=30, per_day=60, seed=3) > 1000
    with app.app_context():
        from chatbot.extensions import db
        db.engine.dispose()
    server = LiveServer(workdir).start()
    yield server
    server.stop()


def charts_and_overflow(page):
    return page.evaluate("""() => ({
        overflow: document.documentElement.scrollWidth - window.innerWidth,
        charts: Array.from(document.querySelectorAll('svg.chart')).map(svg => {
            const box = svg.getBoundingClientRect();
            return {id: svg.id, width: box.width, height: box.height, right: box.right,
                    shapes: svg.querySelectorAll('rect, polyline').length};
        }),
    })""")


@pytest.mark.parametrize("kind, name", [("desktop", "analytics-desktop"), ("mobile", "analytics-360x640")])
def test_the_page_on_a_desktop_and_a_phone(live, context, kind, name):
    page = admin_login(context(kind), live, "/admin/analytics/")
    page.wait_for_load_state("load")
    found = charts_and_overflow(page)
    assert found["overflow"] <= 0, found  # nothing wider than the screen, even at 360 px
    assert [c["id"] for c in found["charts"]] == ["chart-periods", "chart-trend", "chart-versions", "chart-channels"]
    width = page.viewport_size["width"]
    for chart in found["charts"]:
        assert chart["width"] > 200 and chart["height"] > 60 and chart["right"] <= width, chart
        assert chart["shapes"] > 3, chart
    # 30 days of simulated chats, every day with some
    assert page.locator("#table-periods tbody tr").count() == 31
    assert page.locator("#table-groups tbody tr a").count() > 3
    if kind == "mobile":  # the phone's screen at the first chart, not at the form above it
        page.evaluate("document.querySelector('h3').scrollIntoView()")
    page.screenshot(path=str(DOCS / f"{name}.png"), full_page=kind == "desktop")
    assert_clean(page)
