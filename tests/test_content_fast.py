"""The per-user fast path of content rendering renders exactly what Jinja renders.

:meth:`Content.render` fills each checked template's ``str.format`` pattern;
:meth:`Content.render_jinja` runs the same parsed templates through Jinja's
runtime (what every render did before). For generated notifications (title,
body, nested data, locales; text with quotes, backslashes, newlines, single
braces, non-ASCII; placeholders with and without defaults and spaces) and
generated attributes (strings, numbers of every kind, booleans, null, missing,
values that look like template code), both give the same strings.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.content import Content, Rendered

NAMES = ["first_name", "plan", "n", "flag", "city_2", "X"]

# text around placeholders: anything, but a "{" is never followed by "{", "%" or
# "#" (that would be template code, refused at compile time: tests/test_content.py)
TEXT = st.text(st.one_of(st.characters(codec="utf-8"),
                         st.sampled_from(list("{}%#|\"'\\\r\n\t $"))),
               max_size=12).map(lambda t: t.replace("{", "{ "))
DEFAULT = st.text(st.characters(codec="utf-8", exclude_characters="{}"), max_size=8)
SPACE = st.sampled_from(["", " ", "  ", "\t", "\n"])


@st.composite
def templates(draw: st.DrawFn) -> str:
    """A string in the placeholder grammar: text and ``{{ name | default }}``."""
    out = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            out.append(draw(TEXT))
            continue
        name = draw(st.sampled_from(NAMES))
        default = draw(st.none() | DEFAULT)
        tail = "" if default is None else "|" + default
        out.append("{{" + draw(SPACE) + name + draw(SPACE) + tail + "}}")
    return "".join(out)


VALUES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=6),
    st.sampled_from(["", "{{ ''.__class__ }}", "{% for x in y %}", "{0}", "{}", "%s"]),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 10.0, 2.0**53, 2.0**53 + 2, 1e300, 0.1 + 0.2, math.pi]),
    st.lists(st.integers(), max_size=2))
ATTRIBUTES = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=len(NAMES))
DATA = st.recursive(
    st.one_of(templates(), st.integers(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["a", "b", "{{n}}"]), inner,
                                            max_size=3)),
    max_leaves=6)
LOCALES = st.dictionaries(
    st.sampled_from(["en", "zh", "zh-CN", "zh-Hant-TW"]),
    st.fixed_dictionaries({}, optional={"title": templates(), "body": templates()}),
    max_size=3)


def _same(fast: Rendered, slow: Rendered) -> None:
    assert fast == slow
    for text in (fast.title, fast.body):
        assert text is None or type(text) is str


@settings(max_examples=400, deadline=None)
@given(title=st.none() | templates(), body=st.none() | templates(), data=DATA,
       locales=st.none() | LOCALES, attrs=ATTRIBUTES,
       locale=st.sampled_from([None, "en-GB", "zh-CN", "zh-Hant-TW", "zh-TW", "fr"]))
def test_the_fast_path_renders_exactly_what_jinja_renders(
        title: str | None, body: str | None, data: Any, locales: dict[str, Any] | None,
        attrs: dict[str, Any], locale: str | None) -> None:
    c = Content.compile(title=title, body=body, data=data, locales=locales)
    _same(c.render(attrs, locale), c.render_jinja(attrs, locale))


@settings(max_examples=300, deadline=None)
@given(text=templates(), users=st.lists(ATTRIBUTES, min_size=1, max_size=5))
def test_one_compiled_notification_serves_many_users_alike(
        text: str, users: list[dict[str, Any]]) -> None:
    """The compiled content keeps no state between users: each user's text is
    Jinja's, in any order and repeated."""
    c = Content.compile(title=text, body="b " + text)
    for attrs in [*users, *reversed(users)]:
        _same(c.render(attrs), c.render_jinja(attrs))


def test_braces_and_format_fields_in_text_and_values_stay_as_they_are() -> None:
    # the pattern is a str.format string: the text's own braces must not act as fields
    text = "{0} {} {x} }{ {{v}} {!r} {:>9} }}"
    c = Content.compile(body=text)
    for v in ("V", "{0}", "{}", None):
        want = text.replace("{{v}}", v or "")
        assert c.render({"v": v}).body == want
        assert c.render_jinja({"v": v}).body == want
