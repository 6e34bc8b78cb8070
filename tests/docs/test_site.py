"""The built site reads offline: its math is MathML written at build time (no TeX left for a
script to typeset), and no page, stylesheet or ``mkdocs.yml`` entry loads anything from another
host. The site is built once, with ``mkdocs build --strict`` as ``make docs`` does."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
# pages known to hold math, in their markdown or in the docstrings they render; a page missing
# here is still checked (every formula on every page must be MathML), this keeps the test honest
MATH_PAGES = ("concepts.html", "benchmarks.html", "api/core.html", "api/testing.html")
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://, https://, //host, ...
LEFTOVER_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")
# elements whose attribute the browser fetches as the page loads (<a href> is only followed)
LOADED = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
}
LINK_NOT_LOADED = {"prev", "next", "canonical", "alternate"}  # navigation, not a resource
VERBATIM = {"code", "pre", "script", "style", "math", "textarea"}


class Page(HTMLParser):
    """What a built page loads and shows: resource URLs, visible text, formulas."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.html = ""
        self.loads: list[str] = []
        self.text: list[str] = []
        self.maths: list[dict[str, str | None]] = []  # attributes of each <math>
        self._verbatim = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        rel = set((values.get("rel") or "").split())
        if tag in LOADED and not (tag == "link" and rel and rel <= LINK_NOT_LOADED):
            for name in LOADED[tag]:
                for url in re.split(r",\s*", values.get(name) or ""):
                    if url:
                        self.loads.append(url.split()[0])
        if style := values.get("style"):
            self.loads += re.findall(r"url\(\s*['\"]?([^'\")]+)", style)
        if tag == "math":
            self.maths.append(values)
        if tag in VERBATIM:
            self._verbatim += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in VERBATIM:
            self._verbatim -= 1

    def handle_data(self, data: str) -> None:
        if not self._verbatim:
            self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.html = path.read_text(encoding="utf-8")
    page.feed(page.html)
    page.close()
    return page


def formulas(page: Page) -> tuple[int, int]:
    """Arithmatex wrappers on the page, and those of them holding MathML (the hook's output)."""
    return page.html.count('class="arithmatex">'), page.html.count('class="arithmatex"><math ')


def build(site_dir: Path) -> subprocess.CompletedProcess[str]:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    command = [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(site_dir)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = build(site_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


@pytest.fixture(scope="session")
def pages(site: Path) -> dict[str, Page]:
    found = {p.relative_to(site).as_posix(): parse(p) for p in sorted(site.rglob("*.html"))}
    assert len(found) >= 15, sorted(found)
    return found


@pytest.mark.parametrize("name", MATH_PAGES)
def test_math_pages_hold_mathml(pages: dict[str, Page], name: str) -> None:
    page = pages[name]
    wrappers, rendered = formulas(page)
    assert wrappers >= 1, f"{name} shows no formula"
    assert rendered == wrappers == len(page.maths)
    displays = {m.get("display") for m in page.maths}
    assert displays <= {"inline", "block"}


def test_display_math_is_display_mode(pages: dict[str, Page]) -> None:
    for name in ("concepts.html", "api/core.html"):
        assert any(m.get("display") == "block" for m in pages[name].maths), name


def test_every_formula_on_every_page_is_mathml(pages: dict[str, Page]) -> None:
    unrendered = {n: formulas(p) for n, p in pages.items()}
    assert {n: k for n, k in unrendered.items() if k[0] != k[1]} == {}


def test_no_page_shows_tex_delimiters(pages: dict[str, Page]) -> None:
    leftover = {}
    for name, page in pages.items():
        text = "".join(page.text)
        found = [text[max(0, m.start() - 30) : m.end() + 30] for m in LEFTOVER_TEX.finditer(text)]
        if found:
            leftover[name] = found
    assert leftover == {}


def test_no_page_loads_from_another_host(pages: dict[str, Page]) -> None:
    remote = {n: [u for u in p.loads if REMOTE.match(u)] for n, p in pages.items()}
    assert {n: urls for n, urls in remote.items() if urls} == {}
    assert any("stylesheets/math.css" in u for u in pages["concepts.html"].loads)


def test_no_stylesheet_loads_from_another_host(site: Path) -> None:
    remote = []
    for css in sorted(site.rglob("*.css")):
        text = css.read_text(encoding="utf-8")
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", text)
        urls += re.findall(r"@import\s+['\"]([^'\"]+)", text)
        remote += [f"{css.relative_to(site)}: {u}" for u in urls if REMOTE.match(u)]
    assert remote == []


def test_no_page_needs_a_math_script(pages: dict[str, Page]) -> None:
    scripts = {u for p in pages.values() for u in p.loads if u.endswith(".js")}
    assert not [u for u in scripts if "mathjax" in u.lower() or "katex" in u.lower()]


def test_mkdocs_yml_loads_nothing_from_another_host() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assets = [
        entry["path"] if isinstance(entry, dict) else entry
        for key in ("extra_javascript", "extra_css")
        for entry in config.get(key) or []
    ]
    assert [a for a in assets if REMOTE.match(a)] == []
    for asset in assets:
        assert (ROOT / config.get("docs_dir", "docs") / asset).is_file(), asset
    assert config["theme"].get("font") is False, "Material loads Google Fonts unless font: false"
    assert "docs/hooks/mathml.py" in config["hooks"]


# --- the hook itself (no build): a formula that does not convert is an error, never TeX output


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mathml_hook", ROOT / "docs/hooks/mathml.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_writes_inline_and_display_mathml() -> None:
    hook = load_hook()
    content = (
        '<p>a <span class="arithmatex">\\(x_i &lt; \\hat\\varepsilon\\)</span></p>\n'
        '<div class="arithmatex">\\[\\frac{a}{b}\n + c\\]</div>'
    )
    rendered, failures = hook.render_math(content)
    assert failures == []
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in rendered
    assert 'display="block"><mrow><mfrac>' in rendered
    assert "\\(" not in rendered and "\\[" not in rendered and "&lt;" not in rendered


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('<span class="arithmatex">\\(\\nosuchmacro x\\)</span>', "does not know \\nosuchmacro"),
        (
            '<div class="arithmatex">\\[\\begin{aligned}a &amp;= b\\end{aligned}\\]</div>',
            "an '&' outside",
        ),
        ("<p>costs $$x$$ here</p>", "TeX outside math markup"),
        ("<p>and \\(x\\) there</p>", "TeX outside math markup"),
    ],
)
def test_hook_reports_what_it_cannot_render(content: str, reason: str) -> None:
    _, failures = load_hook().render_math(content)
    assert failures and all(reason in f for f in failures), failures


def test_hook_leaves_code_and_prices_alone() -> None:
    content = "<p>$5 or $10, <code>\\(x\\) $$</code></p><pre>$HOME \\[</pre>"
    assert load_hook().render_math(content) == (content, [])


def test_a_formula_that_does_not_convert_fails_the_build(tmp_path: Path) -> None:
    """The hook's error reaches mkdocs: the build stops, naming the page and the formula."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Bad\n\nA formula: $\\nosuchmacro x$.\n")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: bad\nstrict: true\n"
        "markdown_extensions:\n  - pymdownx.arithmatex:\n      generic: true\n"
        f"hooks:\n  - {ROOT / 'docs/hooks/mathml.py'}\n"
    )
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "math on index.md does not render" in result.stderr
    assert "\\nosuchmacro" in result.stderr


def test_the_chords_cadence_has_the_anchors_docstrings_link_to(pages: dict[str, Page]) -> None:
    """``[text][chords]`` in a docstring resolves (autorefs) to these headings of the concepts."""
    html = pages["concepts.html"].html
    anchors = ("chords", "chords-cadence", "chords-rectification", "chords-finish-rounds")
    anchors += ("chords-evaluations", "chords-stop-rules", "chords-official-threshold")
    assert [a for a in anchors if f'id="{a}"' not in html] == []
