"""The README is the newcomer's door (at most 200 lines, a link to every page of the reference) and
docs/ is the reference, a MkDocs site whose nav holds every page (`make lint` builds it strictly)."""

import re

import yaml

from tests.conftest import ROOT


def nav_pages() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return [page for entry in config["nav"] for page in entry.values()]


def test_the_readme_is_short_and_links_every_page_of_the_reference():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert set(nav_pages()) - {"index.md"} <= linked, set(nav_pages()) - linked


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert pages == set(nav_pages())
