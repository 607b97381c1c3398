"""Jinja's sandbox with limits on work and size: campaign authors are users, not trusted code.

Jinja's own sandbox stops a template from reaching Python's internals, not from burning CPU
or memory. This one also bounds:

- compiling: the number of Jinja tokens of a template (compile time grows with them, ~23 s
  for 100,000 `{{ a }}` on a busy machine), and no constant folding (`{{ 7 ** 3000000 }}`
  was folded while compiling);
- rendering, per message: loop iterations and calls, and a deadline checked at each of them;
- values: `*`, `**`, `+`, `%`, `~`, the growing filters and `str` methods refuse a result
  above `MAX_VALUE_SIZE` before building it; integers above `MAX_INT_BITS`;
- output: each rendered template's size (checked while it is produced).

Each refusal raises `TemplateLimitError` (a `SecurityError`) naming the limit.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_TOKENS = 5_000  # per template: bounds compile time (~0.5 s at the cap, busy machine)
MAX_VALUE_SIZE = 1_000_000  # characters of a string, items (deep) of a sequence
MAX_INT_BITS = 4_096  # about 1,230 decimal digits
MAX_STEPS = 100_000  # loop iterations + calls + filters, per message
RENDER_TIME_LIMIT_S = 0.1  # per message (subject, text and HTML together)
MAX_RENDERED = {"subject": 2_000, "body": 2_000_000, "html": 2_000_000}  # characters

_DIGITS = re.compile(r"\d+")


class TemplateLimitError(SecurityError):
    """A template went over one of the limits above."""


class Budget:
    """What one message's rendering may still spend."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.perf_counter() + RENDER_TIME_LIMIT_S

    def tick(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateLimitError(f"more than {MAX_STEPS:,} loop iterations and calls")
        if not self.steps & 15 and time.perf_counter() > self.deadline:  # 16 steps are µs
            raise TemplateLimitError(
                f"rendering took longer than {RENDER_TIME_LIMIT_S * 1000:.0f} ms"
            )


_BUDGET: ContextVar[Budget | None] = ContextVar("dispatch_template_budget", default=None)


@contextmanager
def budget() -> Iterator[Budget]:
    """One message's budget, shared by its templates (rendering is synchronous)."""
    current = Budget()
    token = _BUDGET.set(current)
    try:
        yield current
    finally:
        _BUDGET.reset(token)


def _tick() -> None:
    current = _BUDGET.get()
    if current is not None:
        current.tick()


def _too_big(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"{what} would exceed {MAX_VALUE_SIZE:,} characters or items")


def size_of(value: Any, limit: int = MAX_VALUE_SIZE) -> int:
    """Characters (strings) plus items (containers) reachable from `value`, up to `limit`+1.

    Containers may share one big string many times (`[s] * 1000`): this counts each use.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, Mapping):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            stack.extend(item)
        else:
            total += 1
        if total > limit:
            return total
    return total


def _check(value: Any, what: str) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"{what}: integers are limited to {MAX_INT_BITS} bits")
    if (
        isinstance(value, str | bytes | list | tuple | dict | set | frozenset)
        and size_of(value) > MAX_VALUE_SIZE
    ):
        raise _too_big(what)
    return value


def _check_format(fmt: str, args: Any, what: str) -> None:
    """`%` / `format` widths: their sum, and any `*` width's value, stay under the cap."""
    if sum(int(d) for d in _DIGITS.findall(fmt)[:10_000]) > MAX_VALUE_SIZE:
        raise _too_big(what)
    values = args if isinstance(args, tuple | list) else (args,)
    if ("*" in fmt or "{" in fmt) and any(
        isinstance(v, int) and abs(v) > MAX_VALUE_SIZE for v in values
    ):
        raise _too_big(what)


def _check_binop(op: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if op == "**":
        if ints and right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
            raise TemplateLimitError(f"** : integers are limited to {MAX_INT_BITS} bits")
    elif op == "*":
        for seq, n in ((left, right), (right, left)):
            sized = isinstance(seq, str | bytes | list | tuple)
            if sized and isinstance(n, int) and n > 0 and size_of(seq) * n > MAX_VALUE_SIZE:
                raise _too_big("*")
        if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise TemplateLimitError(f"* : integers are limited to {MAX_INT_BITS} bits")
    elif op == "+":
        sized = isinstance(left, str | bytes | list | tuple) and isinstance(right, type(left))
        if sized and size_of(left) + size_of(right) > MAX_VALUE_SIZE:
            raise _too_big("+")
    elif op == "%" and isinstance(left, str):
        _check_format(left, right, "%")


def _estimate_replace(s: str, old: str, new: str, count: int = -1) -> int:
    hits = (len(s) + 1) if old == "" else s.count(old)
    if count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """`str` methods that can grow a string far beyond their inputs."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    s = getattr(target, "__self__", None)
    if not isinstance(s, str):
        return
    name = getattr(target, "__name__", "")
    values = (*args, *kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill"):
        if values and isinstance(values[0], int) and values[0] > MAX_VALUE_SIZE:
            raise _too_big(name)
    elif name == "expandtabs":
        width = values[0] if values and isinstance(values[0], int) else 8
        if len(s) + s.count("\t") * width > MAX_VALUE_SIZE:
            raise _too_big(name)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        if _estimate_replace(s, args[0], str(args[1]), count) > MAX_VALUE_SIZE:
            raise _too_big(name)
    elif name == "join" and args and isinstance(args[0], list | tuple):
        if size_of(args[0]) + len(s) * len(args[0]) > MAX_VALUE_SIZE:
            raise _too_big(name)
    elif name in ("format", "format_map"):
        _check_format(s, values, name)


_SIZED_FILTERS = frozenset({"join", "string", "tojson", "pprint", "list", "sum", "sort", "unique"})


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A builtin filter that refuses huge numeric arguments and results above the caps."""
    skip = 2 if hasattr(func, "jinja_pass_arg") else 1  # (context,) value, then arguments

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        value = args[skip - 1] if len(args) >= skip else None
        rest = (*args[skip:], *kwargs.values())
        if any(isinstance(a, int) and abs(a) > MAX_VALUE_SIZE for a in rest):
            raise _too_big(f"|{name}")
        if name == "indent" and isinstance(value, str):
            width = rest[0] if rest else 4
            pad = len(width) if isinstance(width, str) else int(width)
            if len(value) + value.count("\n") * pad > MAX_VALUE_SIZE:
                raise _too_big("|indent")
        elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
            count = rest[2] if len(rest) > 2 and isinstance(rest[2], int) else -1
            if _estimate_replace(value, str(rest[0]), str(rest[1]), count) > MAX_VALUE_SIZE:
                raise _too_big("|replace")
        elif name == "format" and isinstance(value, str):
            _check_format(value, args[skip:] or tuple(kwargs.values()), "|format")
        elif name in _SIZED_FILTERS and size_of(value) > MAX_VALUE_SIZE:
            raise _too_big(f"|{name}")
        return _check(func(*args, **kwargs), f"|{name}")

    return guarded


@jinja2.pass_context  # a context filter is never folded while compiling
def _counted(context: Any, iterable: Any) -> Iterator[Any]:
    """What every `{% for %}` loops over: each iteration spends one step of the budget."""
    for item in iterable:
        _tick()
        yield item


class _LimitedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b ~ …`: as Jinja's, but the parts are measured before they are joined.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.checked_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox campaigns are compiled and rendered in."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=autoescape,
            optimized=False,  # no constant folding while compiling: it ran user arithmetic
            finalize=self._finalize,
        )
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["_counted"] = _counted

    @staticmethod
    def _finalize(value: Any) -> Any:
        # `{{ [s] * 1000 }}`: the printed form of a container is as big as what it holds.
        if isinstance(value, list | tuple | dict | set | frozenset):
            _check(value, "output")
        return value

    @staticmethod
    def checked_concat(join: Callable[[Any], str], parts: tuple[Any, ...]) -> str:
        if sum(size_of(part) for part in parts) > MAX_VALUE_SIZE:
            raise _too_big("~")
        return join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _check(super().call_binop(context, operator, left, right), operator)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_str_method(__obj, args, kwargs)
        if any(isinstance(a, int) and a.bit_length() > MAX_INT_BITS for a in args):
            raise TemplateLimitError(f"integers are limited to {MAX_INT_BITS} bits")
        return _check(super().call(__context, __obj, *args, **kwargs), "call")

    def _tokenize(
        self, source: str, name: str | None, filename: str | None = None, state: str | None = None
    ) -> TokenStream:
        return TokenStream(
            _counted_tokens(super()._tokenize(source, name, filename, state)), name, filename
        )

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_counted", [], [], None, None)
            loop.iter.set_lineno(loop.lineno)
        return tree


def _counted_tokens(stream: Iterator[Token]) -> Iterator[Token]:
    for n, token in enumerate(stream):
        if n >= MAX_TEMPLATE_TOKENS:
            raise TemplateLimitError(
                f"more than {MAX_TEMPLATE_TOKENS:,} Jinja tokens ({{{{ }}}}, {{% %}} and "
                "what is inside them); move logic out of the template"
            )
        yield token


def render_limited(template: jinja2.Template, context: Mapping[str, Any], limit: int) -> str:
    """Template.render, stopping as soon as the output passes `limit` characters."""
    out: list[str] = []
    size = 0
    for chunk in template.root_render_func(template.new_context(dict(context))):
        size += len(chunk)
        if size > limit:
            raise TemplateLimitError(f"the rendered text is longer than {limit:,} characters")
        out.append(chunk)
    return "".join(out)
