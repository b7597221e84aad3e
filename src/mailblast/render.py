"""Campaign templates: compile once, check against the list's columns, render per recipient.

Templates run in Jinja2's sandbox with strict undefined variables, so a template cannot reach
Python internals and a missing value is an error instead of an empty string. Only the HTML body
is auto-escaped: a field such as ``<b>`` is markup-escaped there but appears as typed in the
subject, the text body and the recipient's display name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jinja2 import FunctionLoader, StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from mailblast.config import Templates
from mailblast.errors import TemplateError

BUILTIN_VARIABLES = frozenset({"email", "campaign", "message_id", "unsubscribe_url"})

_PARTS = ("subject", "text", "html", "to_name")


@dataclass(slots=True)
class Rendered:
    """One recipient's rendered templates, with None for each template the campaign lacks."""

    subject: str
    text: str | None
    html: str | None
    to_name: str | None


class CompiledTemplates:
    """Subject, text, html and optional to_name templates compiled once per campaign."""

    def __init__(self, templates: Templates, columns: Iterable[str] | None = None) -> None:
        """Compile every template and, when ``columns`` is given, check the variables they use.

        Raises TemplateError listing every syntax error and unknown variable, each with the
        template's file (or campaign key) and line.
        """
        sources = {part: getattr(templates, part) for part in _PARTS}
        self._sources: dict[str, str] = {k: v for k, v in sources.items() if v is not None}
        self._labels = {
            "subject": "campaign.subject",
            "text": templates.text_path or "campaign.text",
            "html": templates.html_path or "campaign.html",
            "to_name": "campaign.to_name",
        }
        self._variables: dict[str, dict[str, int]] = {}
        self._plain: dict[str, _PlainTemplate] = {}
        problems: list[str] = []
        if templates.text is None and templates.html is None:
            problems.append(
                "campaign.text: missing; give a text template, an html template or both"
            )

        plain = self._environment(autoescape=False)
        html = self._environment(autoescape=True)
        self._compiled: dict[str, Template] = {}
        self._globals = dict(plain.globals)
        for part in self._sources:
            environment = html if part == "html" else plain
            self._compile(environment, part, problems)

        if columns is not None:
            known = BUILTIN_VARIABLES | set(plain.globals)
            problems.extend(self._unknown_variables(list(columns), known))
        if problems:
            raise TemplateError(problems)

    def render(self, fields: Mapping[str, str], extra: Mapping[str, str]) -> Rendered:
        """Render all templates for one recipient.

        ``extra`` contains the built-in variables and wins over a column of the same name. Raises
        TemplateError naming the template and line when rendering fails, so that the caller can
        fail this message alone.
        """
        # The globals go into the one context dict shared by all four templates, so Jinja does
        # not build a merged copy per template (see _render).
        context: dict[str, Any] = dict(self._globals)
        context.update(fields)
        context.update(extra)
        return Rendered(
            subject=self._render("subject", context) or "",
            text=self._render("text", context),
            html=self._render("html", context),
            to_name=self._render("to_name", context),
        )

    def templates_using(self, variable: str) -> list[str]:
        """Return the labels (file path or campaign key) of the templates that use ``variable``."""
        return [self._labels[part] for part, used in self._variables.items() if variable in used]

    def _environment(self, autoescape: bool) -> SandboxedEnvironment:
        # The loader gives each template its label as file name, so that Jinja's rewritten
        # tracebacks carry the label and the template line of a render error.
        parts = [part for part in self._sources if (part == "html") == autoescape]

        def load(name: str) -> tuple[str, str, None] | None:
            if name not in parts:
                return None
            return self._sources[name], self._labels[name], None

        return SandboxedEnvironment(
            loader=FunctionLoader(load),
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
        )

    def _compile(self, environment: SandboxedEnvironment, part: str, problems: list[str]) -> None:
        label = self._labels[part]
        try:
            tree = environment.parse(self._sources[part], name=part, filename=label)
            self._compiled[part] = environment.get_template(part)
        except TemplateSyntaxError as error:
            problems.append(f"{label}:{error.lineno}: invalid template: {error.message}")
            return
        self._variables[part] = _variable_lines(tree)
        plain = _PlainTemplate.from_tree(tree, escapes=part == "html")
        if plain is not None:
            self._plain[part] = plain

    def _unknown_variables(self, columns: list[str], known: frozenset[str]) -> list[str]:
        available = ", ".join(columns) if columns else "(none)"
        builtins = ", ".join(sorted(BUILTIN_VARIABLES))
        problems = []
        allowed = known | set(columns)
        for part, variables in self._variables.items():
            for name, line in variables.items():
                if name in allowed:
                    continue
                problems.append(
                    f"{self._labels[part]}:{line}: unknown variable {name!r}; the recipient list"
                    f" has the columns {available} and the built-in variables are {builtins};"
                    " add the column to the list or correct the name"
                )
        return problems

    def _render(self, part: str, context: dict[str, Any]) -> str | None:
        template = self._compiled.get(part)
        if template is None:
            return None
        plain = self._plain.get(part)
        if plain is not None:
            text = plain.render(context)
            if text is not None:
                return text
        try:
            # Template.render without its per-call copy of the context; ``context`` already
            # holds the globals. A failure is rendered again below for its template line.
            body = template.root_render_func(template.new_context(context, shared=True))
            return template.environment.concat(body)
        except Exception:
            pass
        try:
            return template.render(context)
        except Exception as error:
            # Filters and tests may raise any exception type, and each must fail only this message.
            label = self._labels[part]
            line = _template_line(error.__traceback__, label)
            where = f"{label}:{line}" if line is not None else label
            reason = f"{type(error).__name__}: {error}"
            raise TemplateError([f"{where}: rendering failed: {reason}"]) from error


class _PlainTemplate:
    """A template that only outputs its text and plain variables, rendered without Jinja.

    Most campaign templates are text with ``{{ name }}`` in places. Jinja builds a new
    context and runs a generator for each render of such a template. Filling a list of its
    text pieces gives the same string at a fraction of the cost. Templates with filters, tags
    or expressions go through Jinja.
    """

    def __init__(self, pieces: list[str], slots: list[tuple[int, str]], escapes: bool) -> None:
        self.pieces = pieces  # the text, with a placeholder where each variable goes
        self.slots = slots  # (index in pieces, variable name)
        self.escapes = escapes

    @classmethod
    def from_tree(cls, tree: nodes.Template, *, escapes: bool) -> _PlainTemplate | None:
        pieces: list[str] = []
        slots: list[tuple[int, str]] = []
        for node in tree.body:
            if not isinstance(node, nodes.Output):
                return None
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    pieces.append(child.data)
                elif isinstance(child, nodes.Name) and child.ctx == "load":
                    slots.append((len(pieces), child.name))
                    pieces.append("")
                else:
                    return None
        return cls(pieces, slots, escapes)

    def render(self, context: Mapping[str, Any]) -> str | None:
        """Return the rendered text, or None when Jinja must render it.

        Jinja renders when a variable is missing (its error names the template line) or is
        not a str, whose conversion Jinja defines.
        """
        pieces = self.pieces.copy()
        for index, name in self.slots:
            value = context.get(name)
            if type(value) is not str:
                return None
            pieces[index] = escape(value) if self.escapes else value
        return "".join(pieces)


def _variable_lines(tree: nodes.Template) -> dict[str, int]:
    """Map each variable the template reads from its context to the first line that reads it."""
    names = meta.find_undeclared_variables(tree)
    lines: dict[str, int] = {}
    for node in tree.find_all(nodes.Name):
        if node.name in names and node.ctx == "load":
            lines[node.name] = min(lines.get(node.name, node.lineno), node.lineno)
    return lines


def _template_line(traceback: TracebackType | None, label: str) -> int | None:
    """Return the template line of the innermost traceback frame that belongs to ``label``."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == label:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line
