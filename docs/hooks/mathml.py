"""mkdocs hook: every formula becomes MathML at build time, so the pages need no script, no font
and no network to show math (browsers render MathML Core natively).

``pymdownx.arithmatex`` (generic mode) marks math up, in the pages and in the docstrings
mkdocstrings renders, as ``<span class="arithmatex">\\(...\\)</span>`` (inline) and
``<div class="arithmatex">\\[...\\]</div>`` (display). This hook converts each with
``latex2mathml`` (pure Python) and keeps the wrapper (the theme scrolls a wide display formula).
A formula that does not convert, or TeX left outside arithmatex's markup, fails the build naming
the page and the formula: nothing is ever shipped as TeX source.
"""

from __future__ import annotations

import html
import re
from typing import Any

import latex2mathml.converter
from mkdocs.exceptions import PluginError

ARITHMATEX = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<body>.*?)</(?P=tag)>', re.S)
DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}
# an entity latex2mathml writes (&#x003B1;) or a named one; a bare & is an unsupported alignment
ENTITY = re.compile(r"&(?!#x?[0-9A-Fa-f]+;|[A-Za-z]+;)")
# TeX that arithmatex did not pick up: \( \[ $$ or $x$ (a dollar hugging a non-space character)
LEFTOVER_TEX = re.compile(r"\\\(|\\\[|\$\$|\$[^\s$](?:[^$\n]*[^\s$])?\$")
CODE = re.compile(r"<(?P<tag>pre|code|script|style|math)\b.*?</(?P=tag)>", re.S)
TAG = re.compile(r"<[^>]+>")


def to_mathml(tex: str, *, display: bool) -> str:
    """The MathML of one formula (without delimiters); ``ValueError`` if it does not convert.

    latex2mathml gives an unknown command back verbatim (``<mi>\\foo</mi>``) and an ``&`` of an
    environment it does not know as a bare ``&``: both count as failures, not as output.
    """
    try:
        mathml = latex2mathml.converter.convert(tex, display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises its own exception types and plain ones
        raise ValueError(f"{type(error).__name__}: {error}") from error
    unknown = sorted(set(re.findall(r"\\[A-Za-z]+|\\.", TAG.sub(" ", mathml))))
    if unknown:
        raise ValueError(f"latex2mathml does not know {', '.join(unknown)}")
    if ENTITY.search(mathml):
        raise ValueError("an '&' outside an environment latex2mathml supports")
    # \hat: latex2mathml's accent is the ASCII caret, which math fonts draw as a tall chevron;
    # the modifier circumflex is the hat TeX draws
    return mathml.replace("<mo>&#x0005E;</mo></mover>", "<mo>&#x002C6;</mo></mover>")


def render_math(content: str) -> tuple[str, list[str]]:
    """``content`` with every arithmatex formula as MathML, and the failures (one line each)."""
    failures: list[str] = []

    def convert(match: re.Match[str]) -> str:
        tag = match["tag"]
        source = html.unescape(match["body"]).strip()
        shown = " ".join(source.split())  # one line per failure
        opening, closing = DELIMITERS[tag]
        if not (source.startswith(opening) and source.endswith(closing)):
            failures.append(f"{shown}: not delimited by {opening} {closing}")
            return match[0]
        tex = source[len(opening) : -len(closing)]
        try:
            mathml = to_mathml(tex, display=tag == "div")
        except ValueError as error:
            failures.append(f"{shown}: {error}")
            return match[0]
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    rendered = ARITHMATEX.sub(convert, content)
    # the formulas left (failed above) are reported once; look for TeX outside them
    text = html.unescape(TAG.sub("", CODE.sub("", ARITHMATEX.sub("", rendered))))
    failures += [
        "TeX outside math markup: " + " ".join(text[max(0, m.start() - 40) : m.end() + 40].split())
        for m in LEFTOVER_TEX.finditer(text)
    ]
    return rendered, failures


def on_page_content(content: str, page: Any, **_: Any) -> str:
    """mkdocs event: the page's HTML (markdown and docstrings alike) with its math as MathML."""
    rendered, failures = render_math(content)
    if failures:
        lines = "\n  ".join(failures)
        raise PluginError(f"math on {page.file.src_uri} does not render:\n  {lines}")
    return rendered
