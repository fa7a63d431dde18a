"""The README and docs/: every relative link leads to a file and, with a #fragment, to a heading there."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path):
    """A page's Markdown without its code blocks, where `# comment` is no heading and [x](y) no link."""
    return FENCE.sub("", path.read_text())


def anchor(heading):
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    """The fragments of a page's headings, the second of a name as name-1, as GitHub numbers them."""
    found = []
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        name = anchor(heading)
        repeats = sum(1 for other in found if re.fullmatch(re.escape(name) + r"(-\d+)?", other))
        found.append(name if not repeats else "%s-%d" % (name, repeats))
    return set(found)


def relative_links(path):
    """(target path, fragment or None) of each link of a page that stays in this repository."""
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        yield (path.parent / file_part).resolve() if file_part else path, fragment or None


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_relative_links_lead_to_files_and_headings(page):
    broken = []
    for target, fragment in relative_links(page):
        if not target.exists():
            broken.append("%s: no such file" % target.relative_to(ROOT.resolve()))
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append("%s#%s: no such heading" % (target.relative_to(ROOT.resolve()), fragment))
    assert not broken, "%s links to:\n%s" % (page.name, "\n".join(broken))


def test_the_anchors_are_githubs():
    assert anchor("OpenTelemetry (OTLP/HTTP)") == "opentelemetry-otlphttp"
    assert anchor("Read from the command line: `manage.py tail`") == "read-from-the-command-line-managepy-tail"
    assert anchor("`GET /logs/<id>/context`") == "get-logsidcontext"


def test_the_readme_stays_one_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 90, "README.md has %d lines: move detail into docs/" % len(lines)
    assert max(map(len, lines)) <= 600
