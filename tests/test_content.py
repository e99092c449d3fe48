"""Content per user (issue 12, scope 2): placeholders, defaults, locales, refusals."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.content import Content, locale_chain
from tidings.errors import BadRequest, TooLarge


def test_placeholders_fill_title_body_and_nested_data() -> None:
    c = Content.compile(title="Hi {{first_name}}!", body="Your {{ plan }} plan",
                        data={"cta": [{"label": "Open, {{first_name|friend}}"}, 7],
                              "url": "https://x.example/u/{{uid}}", "plain": "{single}"})
    r = c.render({"first_name": "Ann", "plan": "pro", "uid": "u1"})
    assert r.title == "Hi Ann!"
    assert r.body == "Your pro plan"
    assert r.data == {"cta": [{"label": "Open, Ann"}, 7],
                      "url": "https://x.example/u/u1", "plain": "{single}"}


def test_defaults_and_missing_values_leave_no_braces() -> None:
    c = Content.compile(title="Hi {{first_name|there}}!", body="[{{nickname}}]")
    assert c.render({}).title == "Hi there!"
    assert c.render({"first_name": None}).title == "Hi there!"
    assert c.render({"first_name": ""}).title == "Hi there!"
    assert c.render({}).body == "[]"
    assert c.render({"nickname": None}).body == "[]"


def test_default_text_is_trimmed_and_may_hold_spaces_and_bars() -> None:
    c = Content.compile(title="{{ name | my dear friend }}", body="{{a|x|y}}")
    r = c.render({})
    assert (r.title, r.body) == ("my dear friend", "x|y")


def test_attribute_values_render_as_json_like_text() -> None:
    c = Content.compile(body="{{a}} {{b}} {{c}} {{d}} {{e}} {{f}}")
    assert c.render({"a": True, "b": False, "c": 3, "d": 2.5, "e": 10.0,
                     "f": -1}).body == "true false 3 2.5 10 -1"
    # zero and false are values, not "missing": the default does not replace them
    c = Content.compile(body="{{n|none}} {{flag|unset}}")
    assert c.render({"n": 0, "flag": False}).body == "0 false"


def test_text_around_placeholders_is_kept_exactly() -> None:
    text = 'a\r\nb\n\n"q" \\ \\n {x} }} %} #} é 中 \U0001f600 \t{{v}}\n'
    c = Content.compile(body=text)
    assert c.render({"v": "V"}).body == text.replace("{{v}}", "V")
    # an attribute's text is inserted as it is, never interpreted
    assert c.render({"v": "{{ ''.__class__ }} {% x %}"}).body == text.replace(
        "{{v}}", "{{ ''.__class__ }} {% x %}")


def test_strings_without_placeholders_are_not_templates() -> None:
    data = {"a": ["x", {"b": "y"}]}
    c = Content.compile(title="Plain", body=None, data=data)
    assert not c.personal
    r = c.render({"x": 1})
    assert (r.title, r.body) == ("Plain", None)
    assert r.data is data


def test_render_never_changes_the_notification_data() -> None:
    data = {"a": [{"b": "{{x}}"}, {"c": "keep"}], "d": {"e": "f"}}
    before = copy.deepcopy(data)
    c = Content.compile(data=data)
    assert c.render({"x": "1"}).data == {"a": [{"b": "1"}, {"c": "keep"}], "d": {"e": "f"}}
    assert c.render({"x": "2"}).data["a"][0]["b"] == "2"
    assert data == before


def test_data_may_itself_be_a_template_string() -> None:
    assert Content.compile(data="hello {{n}}").render({"n": "N"}).data == "hello N"


def test_deep_data_compiles_and_renders_without_recursion() -> None:
    data: object = "{{x|deep}}"
    for i in range(3000):
        data = {"k": [data]} if i % 2 else [data, "p"]
    r = Content.compile(data=data).render({})
    node = r.data
    for _ in range(3000):
        node = node["k"][0] if isinstance(node, dict) else node[0]
    assert node == "deep"


UNSAFE = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for x in range(10) %}x{% endfor %}",
    "{% set a = 1 %}",
    "{# a comment #}",
    "{{ user.name }}",
    "{{ range(10) }}",
    "{{ name() }}",
    "{{ name[0] }}",
    "{{ 7*7 }}",
    "{{ lipsum }}x{{",
    "{{ name }",
    "{{{name}}}",
    "{{ 1name }}",
    "{{ _private }}",
    "{{}}",
    "{{ a|b{c}} }}",
]


@pytest.mark.parametrize("code", UNSAFE)
@pytest.mark.parametrize(("where", "fields"), [
    ("title", lambda v: {"title": v}),
    ("body", lambda v: {"body": "ok {{name}} " + v}),
    ("data.cta[1].label", lambda v: {"data": {"cta": [1, {"label": v}]}}),
    ("locales.zh-CN.body", lambda v: {"locales": {"zh-CN": {"body": v}}}),
])
def test_template_code_is_refused_naming_the_field(
        code: str, where: str, fields: Callable[[str], dict[str, Any]]) -> None:
    with pytest.raises(BadRequest) as e:
        Content.compile(**fields(code))
    assert e.value.message.startswith(f"{where}: ")
    assert e.value.status == 400


def test_a_filter_looking_default_is_only_text() -> None:
    # {{name|upper}} is our syntax: "upper" is the default, no Jinja filter runs
    c = Content.compile(title="{{name|upper}}", body="{{ name|upper() }}")
    assert c.render({"name": "ann"}).title == "ann"
    assert (c.render({}).title, c.render({}).body) == ("upper", "upper()")


def test_bad_shapes_are_refused_naming_the_field() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"title": 5}, "title: "),
        ({"locales": ["en"]}, "locales: "),
        ({"locales": {"not a tag": {"title": "x"}}}, "locales.not a tag: "),
        ({"locales": {"en": "x"}}, "locales.en: "),
        ({"locales": {"en": {"data": {}}}}, "locales.en.data: "),
        ({"locales": {"en": {"title": 1}}}, "locales.en.title: "),
        ({"locales": {"en": {"title": "a"}, "EN": {"title": "b"}}}, "locales.EN: "),
    ]
    for fields, prefix in cases:
        with pytest.raises(BadRequest) as e:
            Content.compile(**fields)
        assert e.value.message.startswith(prefix), (fields, e.value.message)


def test_more_templated_strings_than_the_limit_are_refused() -> None:
    data = {f"k{i}": f"{{{{v{i}}}}}" for i in range(5)}
    Content.compile(data=data, max_templates=5)
    with pytest.raises(TooLarge) as e:
        Content.compile(title="{{a}}", data=data, max_templates=5)
    assert "notify.max_templates" in e.value.message
    # plain strings do not count
    Content.compile(title="plain", body="plain", data={"a": "plain"}, max_templates=0)


LOCALES = {"zh-CN": {"title": "你好 {{first_name|朋友}}", "body": "简体"},
           "zh": {"body": "中文"},
           "en": {"title": "Hello {{first_name|there}}"}}


@pytest.mark.parametrize(("locale", "title", "body"), [
    ("zh-CN", "你好 Ann", "简体"),
    ("zh-cn", "你好 Ann", "简体"),       # tags ignore case
    ("zh-TW", "Top Ann", "中文"),        # base language: zh has a body, no title
    ("zh-Hant-TW", "Top Ann", "中文"),
    ("en-GB", "Hello Ann", "Top body"),  # en has a title only
    ("fr", "Top Ann", "Top body"),       # no match: the top-level content
    (None, "Top Ann", "Top body"),
])
def test_locales_fall_back_to_the_base_language_then_the_top_level(
        locale: str | None, title: str, body: str) -> None:
    c = Content.compile(title="Top {{first_name}}", body="Top body", locales=LOCALES)
    r = c.render({"first_name": "Ann"}, locale)
    assert (r.title, r.body) == (title, body)


def test_locale_chain_is_rfc_4647_lookup() -> None:
    assert locale_chain("zh-Hant-TW") == ["zh-hant-tw", "zh-hant", "zh"]
    assert locale_chain("en-a-bbb-US") == ["en-a-bbb-us", "en-a-bbb", "en"]
    assert locale_chain(None) == []


NAMES = st.sampled_from(["first_name", "plan", "city"])


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(
           st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=8),
           st.tuples(NAMES, st.one_of(st.none(), st.text(
               alphabet=st.characters(blacklist_characters="{}"), max_size=5)))),
           max_size=6),
       attrs=st.dictionaries(NAMES, st.one_of(st.none(), st.text(max_size=5), st.integers()),
                             max_size=3))
def test_rendering_matches_a_simple_model(parts: list[Any], attrs: dict[str, Any]) -> None:
    """Any text with placeholders renders as the model says: the value, else the
    default, else nothing; never a brace the template did not have as text."""
    source = []
    expected = []
    for p in parts:
        if isinstance(p, str):
            source.append(p)
            expected.append(p)
            continue
        name, default = p
        source.append("{{" + name + ("" if default is None else "|" + default) + "}}")
        v = attrs.get(name)
        expected.append(str(v) if v not in (None, "") else (default or "").strip())
    c = Content.compile(body="".join(source))
    assert c.render(attrs).body == "".join(expected)
