"""Cells of the admin lists: one line each, the whole value on hover, times to the second."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

#: Characters of a value kept in a cell's title (its hover text) at most.
TITLE_CHARS = 2000
ELLIPSIS = "\u2026"
ONE_LINE_STYLE = (
    "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;display:inline-block;"
    "vertical-align:bottom;"
)


def moment(value: Any) -> str:
    """A date and time to the second, in the current time zone: ``2026-11-27 19:04:05``."""
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return str(date_format(local, "Y-m-d H:i:s"))


def moment_cell(value: Any) -> SafeString:
    """A time to the second, the date and the time each unbroken (a narrow column puts
    them on two lines), with microseconds and time zone on hover."""
    if value is None:
        return mark_safe("")
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    day, time = moment(value).split(" ", 1)
    return format_html(
        '<span class="sf-moment" title="{}"><span style="white-space:nowrap">{}</span> '
        '<span style="white-space:nowrap">{}</span></span>',
        date_format(local, "Y-m-d H:i:s.u T"),
        day,
        time,
    )


def cut(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + ELLIPSIS


def title_text(text: str) -> str:
    """A value for a title attribute: whole, unless very long (then it says how much more)."""
    if len(text) <= TITLE_CHARS:
        return text
    return text[:TITLE_CHARS] + f"{ELLIPSIS} ({len(text) - TITLE_CHARS} more characters)"


def one_line(
    text: str,
    chars: int,
    *,
    code: bool = False,
    css: str = "",
    title: str | None = None,
    width: str = "",
) -> SafeString:
    """``text`` on one line, cut to ``chars`` characters, the whole of it (or ``title``)
    as the title, shown on hover."""
    shown = cut(" ".join(text.split()) if "\n" in text else text, chars)
    tag = "code" if code else "span"
    # Cut on the server, and by the column's width too when it is narrower.
    return format_html(
        '<{} class="sf-one-line{}" style="{}" title="{}">{}</{}>',
        tag,
        f" {css}" if css else "",
        ONE_LINE_STYLE + (f"max-width:{width}" if width else ""),
        title_text(text if title is None else title),
        shown,
        tag,
    )
