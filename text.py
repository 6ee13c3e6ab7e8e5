"""Pure text helpers for replies going from Chatwoot to Mercado Livre.

Chatwoot agents write markdown; Mercado Livre shows plain text, limits the
length of answers and post-sale messages, and accepts only Latin-1 characters
in post-sale messages.  Everything here is deterministic and free of I/O, so
the outbox can recompute the same parts after a crash.
"""

from __future__ import annotations

import bisect
import html
import re
import unicodedata

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

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_QUOTE_PREFIX = re.compile(r"^ {0,3}> ?")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?=[ \t]|$)")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET = re.compile(r"^([ \t]*)[-*+](?:[ \t]+|$)")
_CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+)>", re.IGNORECASE)
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_TRAILING_BACKSLASH = re.compile(r"\\$")
# Link destination with an optional short title: [text](url "title").  Written
# without adjacent ambiguous quantifiers so that odd input stays linear.
_DESTINATION = (
    r"\([ \t]*<?((?:[^\s()<>]|\([^\s()<>]*\))*)>?[ \t]*"
    r"(?:(?:\"[^\"\n]{0,300}\"|'[^'\n]{0,300}')[ \t]*)?\)"
)
_IMAGE = re.compile(r"!\[([^\[\]\n]*)\]" + _DESTINATION)
_LINK = re.compile(r"\[([^\[\]\n]*)\]" + _DESTINATION)
_BARE_URL = re.compile(r"(?:https?://|www\.)[^\s<>]+", re.IGNORECASE)
_URL_TRAILING_PUNCT = ".,:;!?*_~'\""
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_URL_SCHEME = re.compile(r"^(?:https?://|mailto:)", re.IGNORECASE)


def _delimiter_patterns(delimiter: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Where `delimiter` (e.g. ``**``) can open and where it can close emphasis.

    An opening run must not follow a letter/digit (so snake_case and 5*3 are
    left alone) and must be followed by a non-space; a closing run mirrors
    that.  This is stricter than CommonMark for intraword ``*``, on purpose.
    """
    run = re.escape(delimiter)
    char = re.escape(delimiter[0])
    opening = re.compile(rf"(?<![^\W_])(?<!{char}){run}(?![\s{char}])")
    closing = re.compile(rf"(?<![\s{char}]){run}(?![^\W_])(?!{char})")
    return opening, closing


_EMPHASIS = tuple((len(d), *_delimiter_patterns(d)) for d in ("***", "___", "**", "__", "~~", "*", "_"))


class _Placeholders:
    """Stores finished fragments behind single private-use characters.

    Protected fragments (code, URLs, escaped characters) must not be touched by
    the emphasis rules.  Placeholder characters are picked among those absent
    from the original text, so they can never collide with its content.
    """

    def __init__(self, text: str) -> None:
        self._present = set(text)
        self._next = 0xF0000  # Supplementary Private Use Areas A and B
        self._values: dict[int, str] = {}

    def add(self, value: str) -> str:
        while chr(self._next) in self._present:
            self._next += 1
        key = chr(self._next)
        self._next += 1
        # A value may embed earlier placeholders (a bare URL running into a
        # code span, a link label): store it resolved so one pass restores all.
        self._values[ord(key)] = self.restore(value)
        return key

    def restore(self, text: str) -> str:
        return text.translate(self._values)


def _remove_pairs(text: str, size: int, opening: re.Pattern[str], closing: re.Pattern[str]) -> str:
    # Each opening run pairs with the first closing run after some content,
    # scanning left to right; done with sorted positions instead of a lazy
    # regex so that long lines of unmatched delimiters stay linear.
    closers = [m.start() for m in closing.finditer(text)]
    if not closers:
        return text
    pieces: list[str] = []
    position = 0
    for match in opening.finditer(text):
        start = match.start()
        if start < position:
            continue
        index = bisect.bisect_left(closers, start + size + 1)
        if index == len(closers):
            break
        end = closers[index]
        pieces.append(text[position:start])
        pieces.append(text[start + size : end])
        position = end + size
    pieces.append(text[position:])
    return "".join(pieces)


def _strip_emphasis(text: str) -> str:
    for _ in range(8):  # nested emphasis needs a few passes; bounded anyway
        before = text
        for size, opening, closing in _EMPHASIS:
            text = _remove_pairs(text, size, opening, closing)
        if text == before:
            break
    return text


def _protect_bare_urls(text: str, store: _Placeholders) -> str:
    def replace(match: re.Match[str]) -> str:
        url = match.group(0)
        end = len(url)
        unbalanced = url.count(")") - url.count("(")
        while end:
            last = url[end - 1]
            if last in _URL_TRAILING_PUNCT or (last == ")" and unbalanced > 0):
                unbalanced -= last == ")"
                end -= 1
            else:
                break
        return store.add(url[:end]) + url[end:]

    return _BARE_URL.sub(replace, text)


def _same_link(text: str, url: str) -> bool:
    if not text or text == url:
        return True
    bare = _URL_SCHEME.sub("", url)
    return text in (bare, bare.rstrip("/"))


def _inline(text: str, store: _Placeholders) -> str:
    def code_span(match: re.Match[str]) -> str:
        content = match.group(2)
        if len(content) > 2 and content.startswith(" ") and content.endswith(" "):
            content = content[1:-1]
        return store.add(content)

    def link(match: re.Match[str]) -> str:
        label = store.restore(_strip_emphasis(_protect_bare_urls(match.group(1), store))).strip()
        url = match.group(2)
        if not url:
            return store.add(label)
        if _same_link(label, url):
            return store.add(url)
        return store.add(f"{label} ({url})")

    text = _CODE_SPAN.sub(code_span, text)
    text = _AUTOLINK.sub(lambda m: store.add(m.group(1)), text)
    text = _ESCAPE.sub(lambda m: store.add(m.group(1)), text)
    text = _TRAILING_BACKSLASH.sub("", text)  # markdown hard break
    text = _IMAGE.sub(lambda m: store.add(m.group(2) or m.group(1)), text)
    text = _LINK.sub(link, text)
    text = _protect_bare_urls(text, store)
    text = _HTML_BREAK.sub("\n", text)
    return _strip_emphasis(text)


def _strip_quotes(line: str) -> tuple[str, bool]:
    quoted = False
    while True:
        match = _QUOTE_PREFIX.match(line)
        if not match:
            return line, quoted
        line = line[match.end() :]
        quoted = True


def _block_line(line: str, store: _Placeholders) -> str:
    if _THEMATIC_BREAK.match(line):
        return ""
    heading = _HEADING.match(line)
    if heading:
        content = line[heading.end() :].strip()
        closing = content.rstrip("#")
        if closing != content and (not closing or closing[-1] in " \t"):
            content = closing.rstrip()  # optional closing sequence: ## Title ##
        return _inline(content, store)
    bullet = _BULLET.match(line)
    if bullet:
        return bullet.group(1) + "- " + _inline(line[bullet.end() :], store)
    return _inline(line, store)


def _unescape_entity(match: re.Match[str]) -> str:
    value = html.unescape(match.group(0))
    return " " if value == "\xa0" else value


def markdown_to_plain(md: str | None) -> str:
    """Turn Chatwoot markdown into the plain text a buyer reads."""
    if not md:
        return ""
    text = md.replace("\r\n", "\n").replace("\r", "\n")
    store = _Placeholders(text)
    out: list[str] = []
    fence: tuple[str, int, bool] | None = None  # (char, length, inside quote)
    for raw in text.split("\n"):
        if fence is not None:
            char, length, fence_quoted = fence
            line = _strip_quotes(raw)[0] if fence_quoted else raw
            stripped = line.strip()
            if stripped and set(stripped) == {char} and len(stripped) >= length:
                fence = None
            else:
                out.append(line)
            continue
        line, quoted = _strip_quotes(raw)
        opening = _FENCE_OPEN.match(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence = (opening.group(1)[0], len(opening.group(1)), quoted)
            continue
        out.append(_block_line(line, store))

    result = store.restore("\n".join(out))
    result = _ENTITY.sub(_unescape_entity, result)
    result = "\n".join(line.rstrip() for line in result.split("\n"))
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
