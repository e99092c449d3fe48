"""Issue 12: hostile input to personal content, preferences and schedule times.

* Server-side template injection: the classic Jinja2 payloads, in any field a
  notification templates, are refused at compile time naming the field; an
  attribute holding template code is inserted as text, never run.
* Work one request can ask for is bounded: placeholders and templated strings
  per notification (``notify.max_placeholders`` / ``notify.max_templates``),
  a 413 naming the setting; data nested as deep as JSON allows renders
  without recursion.
* A time zone name is looked up in zoneinfo's list, never used as a path.
* Error messages quote at most a short prefix of the peer's value.
"""

from __future__ import annotations

from typing import Any

import pytest

from tidings import config
from tidings.content import Content
from tidings.errors import BadRequest, TooLarge
from tidings.preferences import Preferences, Rules, merge, parse
from tidings.schedule import parse_send_at, parse_send_at_local

SSTI = [
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ request.application.__globals__ }}",
    "{{ '%c'|format(65) }}",
    "{{ 7*'7' }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% raw %}{{x}}{% endraw %}",
    "{%- if 1 -%}x{%- endif -%}",
    "{{- name -}}",
    "{{ name.__class__ }}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_is_refused_in_every_templated_field(payload: str) -> None:
    for fields, where in (({"title": payload}, "title"),
                          ({"body": f"Hi {{{{first_name}}}} {payload}"}, "body"),
                          ({"data": {"deep": [{"x": payload}]}}, "data.deep[0].x"),
                          ({"locales": {"en": {"title": payload}}}, "locales.en.title")):
        with pytest.raises(BadRequest) as e:
            Content.compile(**fields)
        assert e.value.message.startswith(f"{where}: "), e.value.message
        assert e.value.to_dict()["code"] == "bad_request"


@pytest.mark.parametrize("name", ["config", "self", "range", "lipsum", "cycler", "joiner",
                                  "namespace", "dict", "loop", "true", "none", "in"])
def test_a_placeholder_reads_only_the_users_attribute_of_that_name(name: str) -> None:
    """Jinja's globals and keywords are not reachable: ``{{ config }}`` is the
    user's attribute ``config`` or nothing."""
    c = Content.compile(title=f"[{{{{ {name} }}}}]")
    assert c.render({}).title == "[]"
    assert c.render({name: "mine"}).title == "[mine]"


def test_a_filter_after_the_bar_is_default_text_never_run() -> None:
    c = Content.compile(title="{{ name|attr('__class__') }}")
    assert c.render({}).title == "attr('__class__')"
    assert c.render({"name": "Ann"}).title == "Ann"


def test_attribute_values_are_text_never_templates() -> None:
    c = Content.compile(title="Hi {{first_name}}", data={"x": "{{city|nowhere}}"})
    evil = "{{ cycler.__init__.__globals__.os.popen('id').read() }}{% for x in y %}"
    r = c.render({"first_name": evil, "city": evil})
    assert r.title == "Hi " + evil
    assert r.data == {"x": evil}


def test_placeholders_per_notification_are_bounded() -> None:
    many = "".join(f"{{{{a{i}}}}}" for i in range(257))
    with pytest.raises(TooLarge) as e:
        Content.compile(data={"x": many})
    assert e.value.message.startswith("data.x: ")
    assert "notify.max_placeholders" in e.value.message
    # spread over many strings, the same bound holds
    spread = {f"k{i}": "{{a}}{{b}}{{c}}{{d}}{{e}}" for i in range(60)}
    with pytest.raises(TooLarge):
        Content.compile(data=spread)
    # the defaults come from the config
    # (what the bound costs to compile is measured in bench/, not asserted here)
    n = config.NotifySettings()
    at_bound = Content.compile(body="".join(f"{{{{a{i}}}}}" for i in range(n.max_placeholders)),
                               max_templates=n.max_templates,
                               max_placeholders=n.max_placeholders)
    assert at_bound.render({"a0": "x"}).body == "x"


def test_deepest_json_data_renders_in_bounded_time() -> None:
    data: Any = "{{x}}"
    for _ in range(1024):  # orjson's nesting limit
        data = [data]
    c = Content.compile(data=data)
    out: Any = c.render({"x": "v"}).data
    for _ in range(1024):  # rendered through every level (no recursion limit hit)
        assert isinstance(out, list) and len(out) == 1
        out = out[0]
    assert out == "v"


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/localtime", "UTC/../UTC",
                                  "America/New_York\x00", "", "a" * 10_000])
def test_time_zone_names_are_not_paths(name: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse({"timezone": name}, Rules.default())
    assert e.value.message.startswith("timezone: ")
    assert len(e.value.message) < 200


def test_deep_or_huge_values_give_short_errors() -> None:
    deep: Any = "x"
    for _ in range(50_000):
        deep = {"a": deep}
    rules = Rules.default()
    for bad in ({"caps": deep}, {"categories": {"social": deep}}, deep):
        with pytest.raises(BadRequest) as e:
            merge(Preferences(), bad, rules)
        assert len(e.value.message) < 300
    long = "k" * 100_000
    for bad in ({long: 1}, {"categories": {long: {}}}, {"caps": {"social": {long: 1}}}):
        with pytest.raises(BadRequest) as e:
            parse(bad, rules)
        assert len(e.value.message) < 300
    cases: list[dict[str, Any]] = [{"locales": {long: {}}}, {"locales": {"en": {long: "x"}}}]
    for fields in cases:
        with pytest.raises(BadRequest) as e:
            Content.compile(**fields)
        assert len(e.value.message) < 300
    for fn in (parse_send_at, parse_send_at_local):
        with pytest.raises(BadRequest) as e:
            fn("9" * 100_000)
        assert len(e.value.message) < 300
