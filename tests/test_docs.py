"""The README reads in two minutes and every link in the docs leads somewhere:
README.md is at most 150 lines, and each relative link in it, in docs/ and
in bench/README.md names a file that exists (and a heading of it, after #)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a link or an image: [text](target)


def links(page: Path) -> list[str]:
    """The link targets of a Markdown page, outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_readme_is_at_most_150_lines_and_starts_with_what_a_newcomer_needs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    first_screen = "\n".join(readme.splitlines()[:45])
    for needed in ("make run", "make test", "http://127.0.0.1:5000", "docs/chat-", "docs/queue-groups-"):
        assert needed in first_screen, needed
    assert "create-admin" in readme.split("## Features")[0]  # how to log in, before the features


def test_every_relative_link_in_the_docs_resolves():
    checked, broken = 0, []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            found = (page.parent / path).resolve() if path else page
            checked += 1
            if not found.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and found.suffix == ".md" and anchor not in anchors(found):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 30
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme():
    readme_links = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [page.name for page in sorted((ROOT / "docs").glob("*.md")) if page.resolve() not in readme_links]
    assert unlinked == []
