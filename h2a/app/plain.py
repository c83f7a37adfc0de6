"""Text from a file, made safe for Streamlit calls that render Markdown.

Streamlit renders GitHub-flavoured Markdown in ``st.markdown``, ``st.caption``, the alert
boxes, titles, image captions, spinner and progress texts, expander/tab labels, metric
labels and every widget label and tooltip. A string that comes from a file (a DICOM tag,
an upload's name, a label CSV's id, a folder name, an error that quotes them) can hold
``![x](http://host/beacon.png)`` and make every viewer's browser fetch the outside URL, a
live link, bold text, LaTeX or an icon. ``plain`` turns such a string into Markdown that
shows the text as typed, and nothing else. ``safe_table`` does the same for tables
(which show text as text, but whose toolbar exports CSV without escaping formulas), and
``chart_text`` for Plotly's labels (which draw a subset of HTML).

What Streamlit 1.67's Markdown interprets (read from its frontend bundle,
``StreamlitMarkdown.*.js``): CommonMark + GFM (emphasis, links, images, autolinks and bare
``www.``/``http://``/e-mail autolinks, tables, strikethrough), raw HTML only with
``unsafe_allow_html``, ``$``/``$$`` math, text directives (``:red[...]``, ``:small[...]``,
``:help[...]``), and three passes over the *text* after parsing: emoji shortcodes
(``:smile:``), ``:material/icon:`` (it rewrites ``:material/`` in the source first) and
``:streamlit:``. CommonMark lets a backslash escape any ASCII punctuation and the escaped
character renders as itself, so every character that can start or take part in one of
those constructs is escaped (``\\$`` also stops Streamlit's math detection; ``.``, ``:``
and ``@`` break bare-URL and e-mail autolinks). Quotes, commas, ``/``, ``=`` and the like
mean nothing outside those constructs and stay as they are, so the Markdown source still
reads like the text. Some passes run over the parsed *text*, after the escapes are gone:
the shortcodes above and GFM's bare-URL/e-mail transform (``mdast-util-gfm-autolink-literal``
looks for ``https?://``, ``www.`` and ``x@y.z`` in text nodes). An invisible WORD JOINER
(U+2060) after every ``:`` and ``@`` and before the ``.`` of ``www.`` leaves none of them
a match. Core code never needs this (it does not render), hence ``h2a/app``.
"""

from __future__ import annotations

import re
import unicodedata

import pandas as pd

from h2a.exports import safe_frame

__all__ = ["DEFAULT_LIMIT", "ELLIPSIS", "MARKDOWN_SPECIALS", "chart_text", "cut", "plain", "safe_table"]

DEFAULT_LIMIT = 200
ELLIPSIS = "…"
WORD_JOINER = "\u2060"

# Emphasis, code, strikethrough/fences, links/images/directives, HTML/autolinks/quotes,
# headings/attributes, list markers/rules, ordered lists and bare URLs, tables, math,
# entities, shortcodes/directives/protocols, e-mail autolinks.
MARKDOWN_SPECIALS = "\\`*_~[]()!<>#{}+-.|$&:@"
_ESCAPE = {ord(c): "\\" + c for c in MARKDOWN_SPECIALS}
_ESCAPE[ord(":")] = "\\:" + WORD_JOINER  # protocol autolinks, :smile:, :material/x:, :streamlit:
_ESCAPE[ord("@")] = "\\@" + WORD_JOINER  # e-mail autolinks
_WWW_DOT = re.compile(r"(?<=www)\.", re.IGNORECASE)  # www.host autolinks
# Bidi overrides and isolates reorder what is shown ("gnp.exe"); shown as spaces, like
# control characters and line/paragraph separators (a newline would start a block).
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_SPACES = re.compile(r"\s+")


def _flat(text: str) -> str:
    """One line: control, separator and bidi characters become spaces, runs of space one."""
    out = "".join(" " if (unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI) else c
                   for c in text)
    return _SPACES.sub(" ", out).strip()


def cut(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` on one line and at most ``limit`` characters (an ellipsis ends a cut one):
    for places that show text as text (``st.text``, tables), where escaping would show."""
    raw = str(text)
    head = raw[: 4 * limit + 64]  # a 5 MB tag: never walk all of it
    flat = _flat(head)
    if len(flat) > limit or len(head) < len(raw):
        flat = flat[: max(limit - 1, 0)].rstrip() + ELLIPSIS
    return flat


def plain(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` as Markdown that renders exactly as the text: one line, at most ``limit``
    visible characters (cut with an ellipsis), every Markdown/HTML/LaTeX/directive trigger
    escaped. ``None`` gives an empty string."""
    if text is None:
        return ""
    return _WWW_DOT.sub(WORD_JOINER + ".", cut(text, limit)).translate(_ESCAPE)


def safe_table(frame: pd.DataFrame, limit: int = 1000, own: tuple[str, ...] = ()) -> pd.DataFrame:
    """A copy of ``frame`` for ``st.dataframe``/``st.data_editor``: text cells on one line and
    cut at ``limit`` (a 5 MB tag is not sent whole), then formula-escaped as in every H2A
    CSV (``h2a.exports.safe_frame``), because the table toolbar's "Download as CSV" exports
    the cells exactly as given. Numbers, dates and missing values are untouched.

    ``own``: columns of H2A's own formatted figures ("+0.12 to +0.50", "+26.2 mo"), never a
    file's text, left as they are: escaped, they would read "'+26.2 mo" on screen."""
    out = frame.copy()
    for col in out.columns:
        if col not in own and (out[col].dtype == object or pd.api.types.is_string_dtype(out[col])):
            out[col] = out[col].map(lambda v: cut(v, limit) if isinstance(v, str) else v)
    kept = out[[c for c in own if c in out.columns]]
    out = safe_frame(out)
    for col in kept.columns:
        out[col] = kept[col]
    return out


def chart_text(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` for a Plotly label (legend entry, hover text): Plotly draws a subset of HTML
    there (``<b>``, ``<a href>``, ...), so ``<`` and ``>`` become entities, which it shows as
    the characters. Idempotent: a label styled twice reads the same."""
    return cut(text, limit).replace("<", "&lt;").replace(">", "&gt;")
