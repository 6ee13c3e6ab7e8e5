"""Pure text helpers for replies going from Chatwoot to Mercado Livre.

Chatwoot agents write markdown; Mercado Livre shows plain text, limits the
length of answers and post-sale messages, and accepts only Latin-1 characters
in post-sale messages.  Everything here is deterministic and free of I/O, so
the outbox can recompute the same parts after a crash.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime
from zoneinfo import ZoneInfo

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

QUESTION_ANSWER_LIMIT = 2000
POSTSALE_DEFAULT_LIMIT = 350

# Mercado Livre also accepts a short list of emoji in post-sale messages, but
# that list is not published in a stable form.  We treat every character
# outside Latin-1 as unsupported, to be safe; add characters here only once
# Mercado Livre documents them.
ALLOWED_EXTRA: frozenset[str] = frozenset()

# --------------------------------------------------------------------------
# Markdown to plain text
# --------------------------------------------------------------------------

# CommonMark plus the two things Chatwoot's editor also writes: ~~strike~~ and bare
# URLs.  Linkify matters even though links are shown as text: it keeps emphasis rules
# away from URLs such as https://x.example/_promo_/.  HTML is parsed only so that <br>
# can become a line break; every other tag is shown as the agent typed it.
_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": True}).enable(["strikethrough", "linkify"])
# An entity stays its own token, so that &nbsp; can become a plain space.
_MARKDOWN.disable("text_join")
# The buyer reads a URL as the agent wrote it, neither percent-encoded nor decoded.
_MARKDOWN.normalizeLink = lambda url: url  # type: ignore[method-assign]
_MARKDOWN.normalizeLinkText = lambda text: text  # type: ignore[method-assign]

_URL_MAX = 2048  # longer "URLs" are left to the emphasis rules, to stay linear
_WORD_BREAK = re.compile(r"[\s(]")
_SPACE = re.compile(r"\s")


def _www_link(state: StateInline, silent: bool) -> bool:
    """A bare www.… URL, read before emphasis can take its _ or * (as in www.x.com/_promo_).

    markdown-it's own linkify rule does this only for URLs with a scheme; URLs without
    one it finds after emphasis is parsed.  Tried at an emphasis character that follows
    a word starting with "www.".
    """
    if state.linkLevel > 0 or state.src[state.pos] not in "_*~":
        return False
    tail = state.pending[-_URL_MAX:]
    word = _WORD_BREAK.split(tail)[-1]
    if word[:4].lower() != "www." or len(word) == len(tail) < len(state.pending):
        return False
    start = state.pos - len(word)
    # One look per word: every _ or * of the same word would otherwise ask again.
    found: dict[int, str] = state.env.setdefault("www_links", {})
    if start not in found:
        space = _SPACE.search(state.src, start, start + _URL_MAX)
        candidate = state.src[start : space.start() if space else min(state.posMax, start + _URL_MAX)]
        # Read as if it had a scheme: an anchored match, cheap, and the same URL rules.
        match = state.md.linkify.match_at_start("http://" + candidate)
        found[start] = match.text.removeprefix("http://").rstrip("*") if match else ""
    text = found[start]
    if start + len(text) <= state.pos:
        return False
    if not silent:
        state.pending = state.pending[: len(state.pending) - len(word)]
        state.push("link_open", "a", 1).markup = "linkify"
        state.push("text", "", 0).content = text
        state.push("link_close", "a", -1).markup = "linkify"
    state.pos = start + len(text)
    return True


_MARKDOWN.inline.ruler.after("linkify", "www_link", _www_link)
# Each rule chain is compiled on first use; done here, once, so that two threads (the
# listener's) never see a chain half built.
_MARKDOWN.parse("> *a* ~~b~~ [c](d) www.e.com/_f_ <br>\n\n- g")

_URL_SCHEME = re.compile(r"^(?:https?://|mailto:)", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_EMPHASIS_OPEN = frozenset({"em_open", "strong_open", "s_open"})
_EMPHASIS_CLOSE = frozenset({"em_close", "strong_close", "s_close"})
_LEAF_BLOCKS = frozenset({"inline", "fence", "code_block", "html_block"})


class _Marker:
    """An emphasis delimiter, shown or dropped once its neighbours are known."""

    __slots__ = ("markup", "shown")

    def __init__(self, markup: str) -> None:
        self.markup = markup
        self.shown = False


def _same_link(text: str, url: str) -> bool:
    if not text or text == url:
        return True
    bare = _URL_SCHEME.sub("", url)
    return text in (bare, bare.rstrip("/"))


def _resolve_markers(pieces: list[str | _Marker], pairs: list[tuple[int, int]]) -> str:
    # CommonMark lets * emphasise inside a word (2*3*4); a buyer should read what
    # the agent typed there, so a pair touching a letter or digit stays literal.
    before: list[str] = []  # the text character nearest before each piece
    last = ""
    for piece in pieces:
        before.append(last)
        if isinstance(piece, str) and piece:
            last = piece[-1]
    after: list[str] = [""] * len(pieces)  # and nearest after it
    last = ""
    for index in range(len(pieces) - 1, -1, -1):
        after[index] = last
        piece = pieces[index]
        if isinstance(piece, str) and piece:
            last = piece[0]
    for opening, closing in pairs:
        if before[opening].isalnum() or after[closing].isalnum():
            pieces[opening].shown = pieces[closing].shown = True  # type: ignore[union-attr]
    return "".join(
        piece if isinstance(piece, str) else piece.markup if piece.shown else "" for piece in pieces
    )


def _inline(tokens: list[Token]) -> str:
    """Plain text of one paragraph or heading."""
    stack: list[tuple[list[str | _Marker], list[tuple[int, int]], list[int], Token]] = []
    pieces: list[str | _Marker] = []
    pairs: list[tuple[int, int]] = []
    openers: list[int] = []
    for token in tokens:
        kind = token.type
        if kind in ("text", "code_inline"):
            pieces.append(token.content)
        elif kind == "text_special":
            # An escape (\*) or an entity (&amp;); &nbsp; reads as a plain space.
            pieces.append(" " if token.content == "\xa0" and token.info == "entity" else token.content)
        elif kind in ("softbreak", "hardbreak"):
            pieces.append("\n")
        elif kind == "html_inline":
            pieces.append("\n" if _HTML_BREAK.fullmatch(token.content) else token.content)
        elif kind == "image":
            pieces.append(str(token.attrGet("src") or "") or token.content)
        elif kind in _EMPHASIS_OPEN:
            openers.append(len(pieces))
            pieces.append(_Marker(token.markup))
        elif kind in _EMPHASIS_CLOSE:
            pairs.append((openers.pop(), len(pieces)))
            pieces.append(_Marker(token.markup))
        elif kind == "link_open":
            stack.append((pieces, pairs, openers, token))
            pieces, pairs, openers = [], [], []
        elif kind == "link_close":
            label = _resolve_markers(pieces, pairs).strip()
            pieces, pairs, openers, link = stack.pop()
            pieces.append(_link_text(label, link))
    return _resolve_markers(pieces, pairs)


def _link_text(label: str, link: Token) -> str:
    url = str(link.attrGet("href") or "")
    if link.markup in ("linkify", "autolink") or not url:
        return label  # a URL the agent typed as such: shown as typed
    if _same_link(label, url):
        return url
    return f"{label} ({url})"


def _leaf_text(token: Token) -> str:
    if token.type == "inline":
        return _inline(token.children or [])
    if token.type == "html_block":
        return _HTML_BREAK.sub("\n", token.content).removesuffix("\n")
    return token.content.removesuffix("\n")  # code, shown verbatim


def markdown_to_plain(md: str | None) -> str:
    """Turn Chatwoot markdown into the plain text a buyer reads."""
    if not md:
        return ""
    out: list[str] = []
    previous_end: int | None = None
    lines: list[int] | None = None  # source lines of the block being read
    prefix = ""  # list marker waiting for the first text of its item
    item_start = 0
    depth = -1  # nesting of lists
    for token in _MARKDOWN.parse(md):
        kind = token.type
        if token.map and kind != "inline":
            lines = token.map  # an inline's own lines leave out a setext heading's underline
        if kind in ("bullet_list_open", "ordered_list_open"):
            depth += 1
        elif kind in ("bullet_list_close", "ordered_list_close"):
            depth -= 1
        elif kind == "list_item_open":
            marker = f"{token.info}{token.markup}" if token.info else "-"
            prefix = "  " * depth + marker + " "
            item_start = token.map[0] if token.map else 0
        elif (kind in _LEAF_BLOCKS or (kind == "list_item_close" and prefix)) and lines:
            # An empty list item still shows its marker, as the agent typed it.
            start, end = lines
            if prefix:
                start = item_start  # the marker's line, not the first text's
            if previous_end is not None:
                # Blocks the agent separated by a blank line stay apart; others follow on the next line.
                out.append("\n\n" if start > previous_end else "\n")
            out.append(prefix + (_leaf_text(token) if kind in _LEAF_BLOCKS else ""))
            prefix = ""
            previous_end = end

    result = "\n".join(line.rstrip() for line in "".join(out).split("\n"))
    result = re.sub(r"\n{3,}", "\n\n", result)
    return result.strip()


# --------------------------------------------------------------------------
# Latin-1 normalisation
# --------------------------------------------------------------------------

_REPLACEMENTS: dict[int, str] = {}


def _map(chars: str, replacement: str) -> None:
    for char in chars:
        _REPLACEMENTS[ord(char)] = replacement


_map("\u2018\u2019\u201a\u201b\u2032", "'")  # curly single quotes, prime
_map("\u201c\u201d\u201e\u201f\u2033", '"')  # curly double quotes, double prime
_map("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-")  # hyphens, dashes, minus
_map("\u2022", "-")  # bullet
_map("\u2026", "...")  # ellipsis
# No-break, narrow, thin, figure and other typographic spaces.
_map(
    "\u00a0\u202f\u2009\u2007\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u200a\u205f\u3000",
    " ",
)
_map("\u2028\u2029", "\n")  # line / paragraph separators
_map("\u200b\u200c\u200d\u2060\ufeff", "")  # zero-width characters


def normalize_latin1(text: str) -> tuple[str, list[str]]:
    """Replace typographic characters by plain ones; report what is left.

    Returns the converted text and the sorted distinct characters that are
    still outside Latin-1 (and not in ALLOWED_EXTRA).  Nothing unsupported is
    ever dropped silently: the caller decides what to do with the report.
    """
    converted = unicodedata.normalize("NFC", text).translate(_REPLACEMENTS)
    unsupported = sorted({c for c in converted if ord(c) > 0xFF and c not in ALLOWED_EXTRA})
    return converted, unsupported


def describe_chars(chars: list[str]) -> str:
    """Human-readable list of characters, e.g. ``"😀" (U+1F600), "→" (U+2192)``.

    Invisible characters (controls, format marks, separators) are shown by
    code point and Unicode name instead of being quoted.
    """
    described = []
    for char in chars:
        code = f"U+{ord(char):04X}"
        if unicodedata.category(char)[0] in "CZ":
            name = unicodedata.name(char, "")
            described.append(f"{code} ({name})" if name else code)
        else:
            described.append(f'"{char}" ({code})')
    return ", ".join(described)


# --------------------------------------------------------------------------
# Splitting into messages
# --------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_LINE_BREAK = re.compile(r"\n")
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]+[\"')\]]*(?=\s)")
_WHITESPACE = re.compile(r"\s")
_NON_SPACE = re.compile(r"\S")


def _last_cut(pattern: re.Pattern[str], window: str, limit: int, use_end: bool) -> int:
    cut = 0
    for match in pattern.finditer(window):
        position = match.end() if use_end else match.start()
        if 0 < position <= limit:
            cut = position
    return cut


def _cut_position(window: str, limit: int) -> int:
    """Where to end the next part; `window` holds its first limit+1 chars.

    The window starts with a non-space; one char past the limit is included so
    that a break right after a part of exactly `limit` chars is seen.
    """
    for pattern, use_end in (
        (_PARAGRAPH_BREAK, False),
        (_LINE_BREAK, False),
        (_SENTENCE_END, True),
        (_WHITESPACE, False),
    ):
        cut = _last_cut(pattern, window, limit, use_end)
        if cut:
            return cut
    return limit  # a single word longer than the limit: hard cut


def split_message(text: str, limit: int = POSTSALE_DEFAULT_LIMIT) -> list[str]:
    """Split `text` into stripped, non-empty parts of at most `limit` chars.

    Breaks are preferred in this order: paragraph break, line break, sentence
    end, space; within the best kind available, the last one that fits is
    used, so parts are as full as possible.  Only a word longer than `limit`
    is ever cut.  Blank text gives no parts.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text.strip()
    parts: list[str] = []
    start = 0  # text[start] is never whitespace
    while len(text) - start > limit:
        window = text[start : start + limit + 1]
        cut = _cut_position(window, limit)
        parts.append(window[:cut].rstrip())
        next_word = _NON_SPACE.search(text, start + cut)
        start = next_word.start() if next_word else len(text)
    if start < len(text):
        parts.append(text[start:])
    return parts


# How a zone is named after a time shown to agents; any other zone by its IANA name.
ZONE_NAMES = {"America/Sao_Paulo": "horário de Brasília"}


def local_time(moment: float | None, zone: str) -> str | None:
    """The one way a date is shown to agents: in the display time zone (DISPLAY_TIMEZONE), never UTC.
    `moment` in epoch seconds; None when there is no date to show."""
    if moment is None:
        return None
    shown = datetime.fromtimestamp(moment, ZoneInfo(zone))
    return f"{shown:%d/%m/%Y %H:%M} ({ZONE_NAMES.get(zone, zone)})"


def text_hash(text: str) -> str:
    """A short digest of a text, runs of whitespace collapsed (Mercado Livre normalizes them): what
    the bridge keeps to know a message as its own without keeping its words."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]
