"""`{var}` placeholders in prompts, reference paths and output paths.

    t = Template.parse("Studio photo of {title}, {{no braces}}")
    t.names                          # ("title",)
    t.render({"title": "red shoes"})  # "Studio photo of red shoes, {no braces}"

Only bare names: `{{` and `}}` are literal braces, and anything Python's format mini-language
would add (`{a.b}`, `{a[0]}`, `{a!r}`, `{a:>5}`, `{}`) is refused when the spec is validated,
so rendering a validated template is a plain `str.format_map` and stays fast for 100,000 cells.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """The template text is malformed (unbalanced braces, unsupported placeholder)."""


class MissingVariable(KeyError):
    """A placeholder has no value for this cell."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no value for {{{self.name}}}"


@dataclass(frozen=True)
class Template:
    text: str
    names: tuple[str, ...]  # distinct placeholder names, in order of appearance

    @classmethod
    def parse(cls, text: str) -> Template:
        """Check the syntax once; raises `TemplateError` with a plain explanation."""
        names: list[str] = []
        try:
            parts = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise TemplateError(
                f"unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"
            ) from None
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (
                f":{spec}" if spec else ""
            ) + "}"
            if not name:
                raise TemplateError("empty placeholder {}: name a variable, e.g. {title}")
            if not name.isidentifier():
                raise TemplateError(
                    f"placeholder {shown} is not a plain variable name "
                    "(letters, digits and _); write {{ and }} for literal braces"
                )
            if conversion or spec:
                raise TemplateError(f"placeholder {shown}: only plain {{{name}}} is supported")
            if name not in names:
                names.append(name)
        return cls(text, tuple(names))

    def render(
        self, values: Mapping[str, str], escape: Callable[[str], str] | None = None
    ) -> str:
        """Fill the placeholders; raises `MissingVariable` for a name `values` lacks.
        `escape` is applied to each value (not to the template's own text): output paths
        encode values with `outputs.paths.encode_segment`."""
        if not self.names and "{" not in self.text and "}" not in self.text:
            return self.text
        if escape is not None:
            try:
                values = {name: escape(values[name]) for name in self.names}
            except KeyError as exc:
                raise MissingVariable(str(exc.args[0])) from None
        try:
            return self.text.format_map(values)
        except KeyError as exc:
            raise MissingVariable(str(exc.args[0])) from None

    def literals(self) -> tuple[str, ...]:
        """The template's own text around its placeholders, in order (the first piece is
        where the text starts: "" when it starts with a placeholder)."""
        return tuple(literal for literal, _name, _spec, _conv in _FORMATTER.parse(self.text))


def placeholders(text: str) -> tuple[str, ...]:
    """The placeholder names of `text` (raises `TemplateError` when malformed)."""
    return Template.parse(text).names
