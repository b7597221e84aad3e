"""Template compilation, preflight against the list's columns, and per-recipient rendering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from mailblast.config import Templates
from mailblast.errors import TemplateError
from mailblast.render import BUILTIN_VARIABLES, CompiledTemplates, Rendered


def compile_templates(
    columns: list[str] | None = None,
    *,
    subject: str = "Hello",
    text: str | None = "Body\n",
    html: str | None = None,
    to_name: str | None = None,
    text_path: str | None = None,
    html_path: str | None = None,
) -> CompiledTemplates:
    templates = Templates(subject, text, html, to_name, text_path, html_path)
    return CompiledTemplates(templates, columns)


def problems_of(columns: list[str] | None = None, **sources: Any) -> list[str]:
    with pytest.raises(TemplateError) as caught:
        compile_templates(columns, **sources)
    return caught.value.problems


def test_render_all_parts() -> None:
    templates = compile_templates(
        subject="Hi {{ name }}",
        text="Dear {{ name }},\n",
        html="<p>{{ name }} at {{ email }}</p>",
        to_name="{{ name }} Lee",
    )

    rendered = templates.render({"name": "Ann"}, {"email": "ann@example.com"})

    assert rendered == Rendered(
        subject="Hi Ann",
        text="Dear Ann,\n",
        html="<p>Ann at ann@example.com</p>",
        to_name="Ann Lee",
    )


def test_render_missing_parts_are_none() -> None:
    rendered = compile_templates(text=None, html="<p>x</p>").render({}, {})

    assert rendered.text is None
    assert rendered.to_name is None
    assert rendered.html == "<p>x</p>"


def test_render_builtin_overrides_column() -> None:
    templates = compile_templates(subject="{{ email }}")

    rendered = templates.render({"email": "column@example.com"}, {"email": "ann@example.com"})

    assert rendered.subject == "ann@example.com"


def test_render_undefined_names_template_and_line() -> None:
    templates = compile_templates(text="Dear {{ name }},\n{{ city }}\n", text_path="/t/body.txt")

    with pytest.raises(TemplateError) as caught:
        templates.render({"name": "Ann"}, {})

    message = str(caught.value)
    assert message.startswith("/t/body.txt:2: rendering failed")
    assert "'city' is undefined" in message


def test_render_undefined_attribute_is_strict() -> None:
    templates = compile_templates(subject="{{ campaign.missing }}")

    with pytest.raises(TemplateError, match=r"campaign\.subject:1: rendering failed"):
        templates.render({}, {"campaign": "spring"})


def test_render_filter_error_is_template_error() -> None:
    templates = compile_templates(html="<p>\n{{ count|int / 0 }}</p>", html_path="/t/body.html")

    with pytest.raises(TemplateError, match=r"/t/body.html:2: .*ZeroDivisionError"):
        templates.render({"count": "3"}, {})


def test_html_escapes_fields() -> None:
    templates = compile_templates(html="<p>{{ name }}</p>")

    rendered = templates.render({"name": "<script>alert(1)</script>"}, {})

    assert rendered.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"


def test_text_and_headers_not_escaped() -> None:
    templates = compile_templates(
        subject="{{ name }}", text="{{ name }}", html="<p>{{ name }}</p>", to_name="{{ name }}"
    )

    rendered = templates.render({"name": "<script>"}, {})

    assert rendered.subject == "<script>"
    assert rendered.text == "<script>"
    assert rendered.to_name == "<script>"


def test_sandbox_blocks_dunder_attribute() -> None:
    templates = compile_templates(text="{{ ''.__class__.__mro__ }}")

    with pytest.raises(TemplateError, match="SecurityError"):
        templates.render({}, {})


def test_sandbox_blocks_format_escape() -> None:
    templates = compile_templates(text="{{ '{0.__class__}'.format(name) }}")

    with pytest.raises(TemplateError, match="SecurityError"):
        templates.render({"name": "Ann"}, {})


def test_syntax_error_names_file_and_line() -> None:
    problems = problems_of(text="line one\nline two {{ name }\n", text_path="/t/body.txt")

    assert len(problems) == 1
    assert problems[0].startswith("/t/body.txt:2: invalid template")


def test_syntax_error_in_subject_names_key() -> None:
    problems = problems_of(subject="{% if %}")

    assert problems[0].startswith("campaign.subject:1: invalid template")


def test_unknown_variable_names_column_and_template() -> None:
    problems = problems_of(["email", "first_name"], text="Hi\n{{ firstname }}\n")

    assert len(problems) == 1
    assert problems[0].startswith("campaign.text:2: unknown variable 'firstname'")
    assert "columns email, first_name" in problems[0]


def test_known_variables_pass() -> None:
    builtins = " ".join(f"{{{{ {name} }}}}" for name in sorted(BUILTIN_VARIABLES))
    text = builtins + " {{ first_name }} {% for i in range(2) %}{{ i }}{% endfor %}"

    templates = compile_templates(["email", "first_name"], text=text)

    assert templates.templates_using("first_name") == ["campaign.text"]


def test_loop_variable_not_reported() -> None:
    templates = compile_templates(
        ["items"], text="{% for item in items|list %}{{ item }}{% endfor %}"
    )

    assert templates.templates_using("item") == []


def test_all_problems_reported_at_once() -> None:
    problems = problems_of(
        ["email"],
        subject="{{ subject_line }}",
        text="{{ broken }\n",
        text_path="/t/body.txt",
        html="<p>{{ city }}</p>",
        html_path="/t/body.html",
        to_name="{{ nickname }}",
    )

    assert len(problems) == 4
    assert problems[0].startswith("/t/body.txt:1: invalid template")
    assert problems[1].startswith("campaign.subject:1: unknown variable 'subject_line'")
    assert problems[2].startswith("/t/body.html:1: unknown variable 'city'")
    assert problems[3].startswith("campaign.to_name:1: unknown variable 'nickname'")


def test_no_body_template_is_error() -> None:
    problems = problems_of(text=None, html=None)

    assert problems == ["campaign.text: missing; give a text template, an html template or both"]


# Templates of text and plain variables skip Jinja's render loop, so their output is compared
# with what Jinja renders.

_VARIABLE_NAMES = ("name", "city", "email", "campaign")
# Without "{", no two pieces can join into the start of a tag, a comment or an expression.
_TEXT_PIECES = st.text(alphabet=st.sampled_from(list("ab <>&\"'\n\r\t}%#-é名Ж")), max_size=12)


@st.composite
def _plain_sources(draw: st.DrawFn) -> str:
    pieces = draw(
        st.lists(
            st.one_of(
                _TEXT_PIECES,
                st.builds(
                    "{{{{{}{}{}}}}}".format,
                    st.sampled_from(["", "-", " ", "- "]),
                    st.sampled_from(_VARIABLE_NAMES),
                    st.sampled_from(["", "-", " ", " -"]),
                ),
            ),
            max_size=8,
        )
    )
    return "".join(pieces)


def _jinja_render(source: str, autoescape: bool, context: dict[str, Any]) -> str:
    environment = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True
    )
    return environment.from_string(source).render(context)


@settings(max_examples=300, deadline=None)
@given(
    source=_plain_sources(),
    values=st.lists(st.text(max_size=8), min_size=len(_VARIABLE_NAMES), max_size=4),
)
def test_plain_templates_match_jinja(source: str, values: list[str]) -> None:
    fields = dict(zip(_VARIABLE_NAMES, values, strict=True))
    templates = compile_templates(subject=source, text=source, html=source, to_name=source)

    rendered = templates.render(fields, {})

    assert rendered.subject == _jinja_render(source, False, fields)
    assert rendered.text == _jinja_render(source, False, fields)
    assert rendered.html == _jinja_render(source, True, fields)
    assert rendered.to_name == rendered.text


@pytest.mark.parametrize(
    "source",
    [
        "{{ name|upper }}, {{ city }}",
        "{% if name %}{{ name }}{% endif %} in {{ city }}",
        "{{ name ~ '!' }} {{ 'x' }}",
        "{% raw %}{{ name }}{% endraw %} {{ city }}",
        "{# note #}{{ name }}\r\n{{ city }}\r\n",
    ],
)
def test_tagged_templates_match_jinja(source: str) -> None:
    fields = {"name": "<Ann & Bo>", "city": "Zürich"}
    templates = compile_templates(text=source, html=source)

    rendered = templates.render(fields, {})

    assert rendered.text == _jinja_render(source, False, fields)
    assert rendered.html == _jinja_render(source, True, fields)
