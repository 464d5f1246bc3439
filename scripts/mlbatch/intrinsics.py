"""A reader for Amazon States Language intrinsic function expressions.

Enough of the grammar to reason about what the state machines compute: calls
(`States.Format('{}-{}', $.a, States.Hash($.b, 'MD5'))`), string literals with
the escapes AWS documents (`\\'`, `\\{`, `\\}`, `\\\\`), numbers, booleans, null and
paths (`$.a.b`, `$$.Execution.Id`, `$variable.x`). Used by the AWS-rules check
(`awsrules.py`) to count calls per field and to find the literals a template
substitution lands in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

__all__ = ["Call", "Literal", "Path", "IntrinsicSyntaxError", "parse", "calls", "is_intrinsic", "literals"]


class IntrinsicSyntaxError(ValueError):
    """The text is not a well-formed intrinsic function expression."""


@dataclass(frozen=True)
class Literal:
    value: object


@dataclass(frozen=True)
class Path:
    path: str


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple = field(default_factory=tuple)


Node = Union[Call, Literal, Path]


def is_intrinsic(text: object) -> bool:
    return isinstance(text, str) and text.startswith("States.")


class _Reader:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def error(self, what: str) -> IntrinsicSyntaxError:
        return IntrinsicSyntaxError(f"{what} at offset {self.i} of {self.text!r}")

    def skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i] == " ":
            self.i += 1

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def node(self) -> Node:
        self.skip()
        c = self.peek()
        if c == "'":
            return self.string()
        if c == "$":
            return self.path()
        if self.text.startswith("States.", self.i):
            return self.call()
        return self.scalar()

    def call(self) -> Call:
        start = self.i
        while self.peek().isalnum() or self.peek() in "._":
            self.i += 1
        name = self.text[start:self.i]
        if self.peek() != "(":
            raise self.error(f"expected '(' after {name}")
        self.i += 1
        args: list[Node] = []
        self.skip()
        if self.peek() == ")":
            self.i += 1
            return Call(name, ())
        while True:
            args.append(self.node())
            self.skip()
            c = self.peek()
            self.i += 1
            if c == ")":
                return Call(name, tuple(args))
            if c != ",":
                raise self.error("expected ',' or ')'")

    def string(self) -> Literal:
        self.i += 1
        out = []
        while True:
            c = self.peek()
            if not c:
                raise self.error("unterminated string literal")
            self.i += 1
            if c == "\\":
                out.append(self.peek())
                self.i += 1
            elif c == "'":
                return Literal("".join(out))
            else:
                out.append(c)

    def path(self) -> Path:
        start, depth = self.i, 0
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif depth == 0 and c in ",) ":
                break
            self.i += 1
        return Path(self.text[start:self.i])

    def scalar(self) -> Literal:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] not in ",) ":
            self.i += 1
        word = self.text[start:self.i]
        if word in ("true", "false", "null"):
            return Literal({"true": True, "false": False, "null": None}[word])
        try:
            return Literal(float(word) if "." in word else int(word))
        except ValueError:
            raise self.error(f"unexpected {word!r}") from None


def parse(text: str) -> Call:
    """The call tree of an intrinsic expression (the whole value of a `.$` field)."""
    reader = _Reader(text)
    node = reader.call()
    reader.skip()
    if reader.i != len(text):
        raise reader.error("trailing text")
    return node


def calls(node: Node) -> int:
    """How many intrinsic function calls an expression makes (AWS counts calls, not depth)."""
    if isinstance(node, Call):
        return 1 + sum(calls(a) for a in node.args)
    return 0


def literals(node: Node):
    """Every string literal in the expression, with the name of the call it is an argument of."""
    if isinstance(node, Call):
        for a in node.args:
            if isinstance(a, Literal) and isinstance(a.value, str):
                yield node.name, a.value
            else:
                yield from literals(a)
