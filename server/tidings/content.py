"""Content per user: placeholders filled from the user's attributes, and locales.

The contract (issue 12):

- ``title``, ``body`` and every string value inside ``data`` (at any depth;
  keys are never templated) may hold placeholders ``{{first_name}}`` or
  ``{{first_name|there}}`` (the text after ``|`` is the default). Names are
  ``[A-Za-z][A-Za-z0-9_]*`` (at most 64), spaces inside the braces are
  allowed, the default is any text without ``{`` or ``}`` (trimmed).
- A placeholder is filled from the user's attribute of that name: a string as
  it is, a number in decimal, a boolean as ``true`` / ``false``. A missing,
  null or empty attribute gives the default, or nothing: never the braces.
- Nothing else is a template: any other ``{{ ... }}`` (attribute access,
  calls, filters, ``{{ ''.__class__ }}``), any ``{% ... %}`` statement and
  any ``{# ... #}`` comment is refused by :meth:`Content.compile` with a
  :class:`~tidings.errors.BadRequest` naming the field (``data.cta[1].label``),
  before anything is sent. Single braces are plain text.
- ``locales: {"zh-CN": {"title": ..., "body": ...}, "en": {...}}`` (keys are
  language tags, matched without regard to case): for a user whose ``locale``
  preference is ``zh-Hant-TW`` the lookup tries ``zh-Hant-TW``, ``zh-Hant``,
  ``zh`` (RFC 4647 section 3.4, "Lookup"), then the top-level content; it is
  made per field, so a locale with only a ``body`` keeps the next title found.
- The text is plain text, not HTML: nothing is escaped (clients escape what
  they put into a page).

How: each templated string is translated once per notification into Jinja2
source (text and defaults become escaped string constants, never template
source; each placeholder a slot variable) and parsed by a
``SandboxedEnvironment`` with no globals; the parsed tree is checked to hold
nothing but those constants and slot variables, and read into a
``str.format`` pattern (``"Hello {0}"``). Rendering per user fills the
pattern from the user's slot values: no Jinja context or generated code runs
per user (that cost ~5 us a user on the send path), and what a tree of
constants and variables renders to is exactly that join:
:meth:`Content.render_jinja` runs the same tree through Jinja's runtime, the
reference the tests hold the fast path to. Strings without a placeholder are
not templates and are returned as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from .errors import BadRequest, TooLarge

__all__ = ["Content", "Rendered", "locale_chain"]

_OPEN = re.compile(r"\{[{%#]")
_PLACEHOLDER = re.compile(
    r"\{\{\s*([A-Za-z][A-Za-z0-9_]{0,63})\s*(?:\|([^{}]*))?\}\}")
# what may stay as it is inside a Jinja string constant: printable ASCII but
# the quote, the backslash and the braces (everything else becomes \UXXXXXXXX,
# which Jinja's lexer decodes with "unicode-escape", after its newline
# normalisation: so "\r\n" in a title stays "\r\n")
_UNSAFE = re.compile(r"[^ !#-\[\]-z|~]")
_LOCALE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,7}")
_VAR = "tidings_v"
_VAR_NAME = re.compile(r"tidings_v[0-9]+")
_LOCALE_FIELDS = ("title", "body")


def _const(text: str) -> str:
    return '"' + _UNSAFE.sub(lambda m: f"\\U{ord(m[0]):08x}", text) + '"'


def _value(v: Any) -> str:
    """An attribute as text: see the module rules."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
    return ""


def _filled(v: Any, default: str) -> str:
    """A placeholder's text: the attribute, or the default when it is missing or empty."""
    if v is None or v == "":
        return default
    return _value(v) or default


_ENV = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_ENV.globals.clear()  # no range(), dict(), lipsum(), ...: a template names only its slots


_BLANK = _ENV.from_string("")


class _Fill:
    """One templated string, checked: a ``str.format`` pattern over the
    notification's slot values (``"Hello {0}"``: the Jinja tree's constants,
    braces doubled, and its slot variables by number), and the tree itself,
    which :meth:`fill_jinja` renders through Jinja's runtime (the reference)."""

    __slots__ = ("_template", "pattern", "tree")

    def __init__(self, tree: nodes.Template) -> None:
        parts: list[str] = []
        for output in tree.body:  # checked by _only_fills: Output nodes of Const / Name
            for n in output.nodes:  # type: ignore[attr-defined]
                if isinstance(n, nodes.Const):
                    parts.append(n.value.replace("{", "{{").replace("}", "}}"))
                else:
                    parts.append("{" + n.name[len(_VAR):] + "}")
        self.pattern = "".join(parts)
        self.tree = tree
        self._template: Template | None = None

    def fill(self, values: Sequence[str]) -> str:
        """The text for one user: ``values[n]`` is slot ``n``'s text."""
        return self.pattern.format(*values)

    def fill_jinja(self, ctx: Context) -> str:
        """The same text through Jinja's runtime: the tree compiled (once, here)
        and run in a template context holding the slot values."""
        if self._template is None:
            self._template = _ENV.from_string(self.tree)
        return str(_ENV.concat(self._template.root_render_func(ctx)))


class _Slots:
    """The placeholders of one notification, numbered once: ``(name, default)``
    -> the Jinja variable ``tidings_v<N>`` every template that uses it reads."""

    def __init__(self, limit: int) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.left = limit
        self.limit = limit

    def var(self, name: str, default: str, where: str) -> str:
        self.left -= 1
        if self.left < 0:
            raise TooLarge(f"{where}: more than {self.limit} placeholders in one "
                           f"notification (notify.max_placeholders)")
        n = self.index.setdefault((name, default), len(self.index))
        return f"{_VAR}{n}"


def _translate(text: str, where: str, slots: _Slots) -> str | None:
    """Our grammar -> Jinja source of constants and slot variables; None: no placeholder."""
    out: list[str] = []
    pos = 0
    found = False
    for m in _OPEN.finditer(text):
        if m.start() < pos:
            continue
        if m[0] != "{{":
            raise BadRequest(f"{where}: template code is not allowed ({m[0]!r} at "
                             f"character {m.start()}); only {{{{name}}}} or "
                             f"{{{{name|default}}}} placeholders")
        p = _PLACEHOLDER.match(text, m.start())
        if p is None:
            raise BadRequest(f"{where}: not a placeholder at character {m.start()}; only "
                             f"{{{{name}}}} or {{{{name|default}}}} are allowed")
        if m.start() > pos:
            out.append("{{ " + _const(text[pos:m.start()]) + " }}")
        out.append("{{ " + slots.var(p[1], (p[2] or "").strip(), where) + " }}")
        pos = p.end()
        found = True
    if not found:
        return None
    if pos < len(text):
        out.append("{{ " + _const(text[pos:]) + " }}")
    return "".join(out)


def _only_fills(tree: nodes.Template) -> bool:
    """The generated tree holds only string constants and slot variables."""
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            return False
        for n in output.nodes:
            if isinstance(n, nodes.Const) and isinstance(n.value, str):
                continue
            if not (isinstance(n, nodes.Name) and n.ctx == "load"
                    and _VAR_NAME.fullmatch(n.name)):
                return False
    return True


class _Compiler:
    """One notification's compile: the slots its templates share and the budget."""

    def __init__(self, limit: int, placeholders: int, prefix: str = "") -> None:
        self.slots = _Slots(placeholders)
        self.left = limit
        self.limit = limit
        self.prefix = prefix

    def compile(self, text: Any, where: str) -> str | _Fill | None:
        """A field's string, compiled; the string itself when it holds no placeholder."""
        if text is None:
            return None
        where = self.prefix + where
        if not isinstance(text, str):
            raise BadRequest(f"{where}: expected a string")
        source = _translate(text, where, self.slots)
        if source is None:
            return text
        self.left -= 1
        if self.left < 0:
            raise TooLarge(f"{where}: more than {self.limit} strings with placeholders in "
                           f"one notification (notify.max_templates)")
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError:  # pragma: no cover - the grammar cannot produce it
            raise BadRequest(f"{where}: not a valid template") from None
        if not _only_fills(tree):  # pragma: no cover - defence in depth
            raise BadRequest(f"{where}: not a valid template")
        return _Fill(tree)


Path = tuple[str | int, ...]
# the templated strings of ``data``: container keys down to their templates
_Trie = dict[str | int, "_Trie | _Fill"]


def _where(path: Path) -> str:
    out = "data"
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else f".{k}"
    return out


def _walk(data: Any) -> Iterator[tuple[Path, str]]:
    """Every string in ``data`` with its path, without recursion (any depth)."""
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            yield path, v
        elif isinstance(v, dict):
            stack.extend(((*path, k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend(((*path, i), x) for i, x in enumerate(v))


def locale_chain(locale: str | None) -> list[str]:
    """RFC 4647 section 3.4 lookup: ``zh-Hant-TW`` -> ``zh-hant-tw``, ``zh-hant``, ``zh``.

    Tags are lower-cased; a single-letter subtag (an extension's singleton) is
    dropped together with what follows it is truncated.
    """
    if not locale:
        return []
    parts = locale.lower().split("-")
    chain = []
    while parts:
        chain.append("-".join(parts))
        parts.pop()
        if parts and len(parts[-1]) == 1:
            parts.pop()
    return chain


@dataclass(frozen=True)
class Rendered:
    """One user's content: what the push, the inbox item and the MQTT payload carry."""

    title: str | None
    body: str | None
    data: Any


def _fill_in(compiled: str | _Fill | None, values: list[str],
             ctx: Context | None) -> str | None:
    """A field's text: a template filled from ``values`` (through Jinja with a ``ctx``)."""
    if isinstance(compiled, _Fill):
        return compiled.fill(values) if ctx is None else compiled.fill_jinja(ctx)
    return compiled


class Content:
    """A notification's title, body, data and locales, compiled once; render per user."""

    def __init__(self, title: str | _Fill | None, body: str | _Fill | None,
                 data: Any, plan: _Trie | _Fill | None,
                 locales: dict[str, dict[str, str | _Fill]], slots: _Slots) -> None:
        self._title = title
        self._body = body
        self._data = data
        self._plan = plan
        self._locales = locales
        self._slots = list(slots.index)  # (name, default) in slot number order
        self.personal = (plan is not None or bool(locales) or isinstance(title, _Fill)
                         or isinstance(body, _Fill))
        """False: every user gets the same content (render may be skipped)."""

    @classmethod
    def compile(cls, *, title: Any = None, body: Any = None, data: Any = None,
                locales: Any = None, max_templates: int = 64,
                max_placeholders: int = 256, field: str = "") -> Content:
        """Validate and compile every template of a notification (once per
        notification). Raises BadRequest naming the field, or TooLarge over
        ``max_templates`` templated strings or ``max_placeholders`` placeholders
        in all (compiling costs ~0.1 ms per placeholder: the bound keeps one
        request's compile to milliseconds). ``field`` prefixes the names errors
        give (``variants[1].`` for a variant's content)."""
        compiler = _Compiler(max_templates, max_placeholders, field)
        t = compiler.compile(title, "title")
        b = compiler.compile(body, "body")
        plan: _Trie | _Fill | None = None
        for path, text in _walk(data):
            c = compiler.compile(text, _where(path))
            if isinstance(c, _Fill):
                if not path:
                    plan = c
                    break
                trie = plan = plan if isinstance(plan, dict) else {}
                for key in path[:-1]:
                    trie = trie.setdefault(key, {})  # type: ignore[assignment]
                trie[path[-1]] = c
        compiled: dict[str, dict[str, str | _Fill]] = {}
        if locales is not None:
            if not isinstance(locales, dict):
                raise BadRequest("locales: expected an object of language tags")
            for tag, fields in locales.items():
                where = f"locales.{str(tag)[:64]}"
                if not isinstance(tag, str) or len(tag) > 35 or not _LOCALE.fullmatch(tag):
                    raise BadRequest(f"{where}: not a language tag like \"en\" or \"zh-CN\"")
                if tag.lower() in compiled:
                    raise BadRequest(f"{where}: given twice (tags ignore case)")
                if not isinstance(fields, dict):
                    raise BadRequest(f"{where}: expected an object with title and/or body")
                entry: dict[str, str | _Fill] = {}
                for k, v in fields.items():
                    if k not in _LOCALE_FIELDS:
                        raise BadRequest(f"{where}.{k[:64]}: unknown field (expected title, "
                                         f"body)")
                    c = compiler.compile(v, f"{where}.{k}")
                    if c is not None:
                        entry[k] = c
                compiled[tag.lower()] = entry
        return cls(t, b, data, plan, compiled, compiler.slots)

    def render(self, attributes: Mapping[str, Any], locale: str | None = None) -> Rendered:
        """The content for one user, from their attributes and ``locale`` preference."""
        return self._render(attributes, locale, jinja=False)

    def render_jinja(self, attributes: Mapping[str, Any],
                     locale: str | None = None) -> Rendered:
        """:meth:`render` through Jinja's runtime (a template context per user, the
        compiled templates' code): the same result, several times slower; the
        reference the fast path is tested against."""
        return self._render(attributes, locale, jinja=True)

    def _render(self, attributes: Mapping[str, Any], locale: str | None,
                jinja: bool) -> Rendered:
        title, body = self._title, self._body
        if self._locales:
            found_title = found_body = False
            for tag in locale_chain(locale):
                entry = self._locales.get(tag)
                if entry is None:
                    continue
                if not found_title and "title" in entry:
                    title, found_title = entry["title"], True
                if not found_body and "body" in entry:
                    body, found_body = entry["body"], True
        if not self.personal:
            return Rendered(title, body, self._data)  # type: ignore[arg-type]
        ctx = None
        if jinja:  # the reference, as every render was: each slot through _filled,
            # into one template context that serves every template
            values = [_filled(attributes.get(name), default) for name, default in self._slots]
            ctx = _BLANK.new_context({f"{_VAR}{n}": v for n, v in enumerate(values)},
                                     shared=True)
        else:  # slot n's text; a non-empty string is itself (the common case, inline)
            get = attributes.get
            values = [v if (v := get(name)).__class__ is str and v else _filled(v, default)
                      for name, default in self._slots]
        return Rendered(_fill_in(title, values, ctx), _fill_in(body, values, ctx),
                        self._render_data(values, ctx))

    def _render_data(self, values: list[str], ctx: Context | None) -> Any:
        """``data`` with its templated strings filled: the containers on their
        paths are copied, the rest is shared with the notification's ``data``."""
        plan = self._plan
        if plan is None:
            return self._data
        if isinstance(plan, _Fill):
            return _fill_in(plan, values, ctx)
        root = _shallow(self._data)
        stack: list[tuple[Any, _Trie]] = [(root, plan)]
        while stack:  # no recursion: data may nest as deep as its parser allows
            copy, trie = stack.pop()
            for key, sub in trie.items():
                if isinstance(sub, _Fill):
                    copy[key] = _fill_in(sub, values, ctx)
                else:
                    child = copy[key] = _shallow(copy[key])
                    stack.append((child, sub))
        return root


def _shallow(v: Any) -> Any:
    return dict(v) if isinstance(v, dict) else list(v)
