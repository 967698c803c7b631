"""The Jinja sandbox prompts are compiled and rendered in, with a hard budget of time and size.

Template authors are hostile input (templates arrive over ``PUT /v1/tasks``). Jinja's
``ImmutableSandboxedEnvironment`` keeps them away from Python internals but not from cost: constant
folding ran ``{{ 'x' * 10**10 }}`` when the template was saved, a value was only measured after it
was built, and loops had no limit. Here:

* nothing unbounded runs at compile time: the optimizer is off, and the operators and filters that
  can amplify (``*``, ``**``, ``+``, ``%``, ``~``, ``center``, ``replace``, ...) are intercepted, so
  Jinja never folds them;
* every intercepted operation checks the size of what it would build *before* building it: no
  string or list over ``MAX_VALUE`` characters / items, no integer over ``MAX_INT_BITS`` bits;
* every loop iteration, call, filter and intercepted operator is charged to the active
  ``RenderBudget`` (``MAX_OPS`` per render), so is the size of every value built (``MAX_BUILT`` in
  all, so many values under the limit cannot add up), and each checks the wall-clock deadline;
* the output is measured chunk by chunk while it is produced (``MAX_RENDER_CHARS``).

A violation raises ``RenderLimitError``; ``TaskTemplate`` turns it into a ``TemplateError`` that
names the prompt (HTTP 400), at registration when an example trips it, else per request.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import re
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

#: Most characters one rendered message may have.
MAX_RENDER_CHARS = 1_000_000
#: Most characters (strings) or weighted items (containers) one value built while rendering may have.
MAX_VALUE = MAX_RENDER_CHARS
#: Most items one container may have (sorting or walking it stays in milliseconds).
MAX_ITEMS = 100_000
#: Largest integer an expression may build, in bits (``3 ** 3000000`` is refused, ``2 ** 64`` is fine).
MAX_INT_BITS = 100_000
#: Loop iterations + calls + filters + intercepted operators one render may spend.
MAX_OPS = 100_000
#: Characters (weight) of all the values one render may build, kept or not: many values each under
#: ``MAX_VALUE`` (``range(100000)|map('center', 999999)|list``) must not add up to gigabytes.
MAX_BUILT = 20 * MAX_VALUE
#: Wall-clock limit of one render (all messages of one request), seconds.
RENDER_SECONDS = 0.1
#: Budget of all renders that checking one template does (every example x variant), ops and seconds.
CHECK_OPS = 2_000_000
CHECK_SECONDS = 2.0
#: Largest input text the slow text filters (``wordwrap``, ``urlize``) accept.
MAX_SLOW_FILTER_CHARS = 100_000
#: Largest ``tojson`` indent.
MAX_JSON_INDENT = 16


class RenderLimitError(Exception):
    """A template exceeded its budget (time, operations or size); the message says which."""


# --------------------------------------------------------------------------- the budget


@dataclass
class RenderBudget:
    """Operations, characters to build and a deadline, shared by everything one render (or one check) does."""

    ops: int
    deadline: float
    scope: str  # "one render" / "checking the template": named in errors
    chars: int = MAX_BUILT

    def charge(self, n: int = 1, size: int = 0) -> None:
        self.ops -= n
        self.chars -= size
        if self.ops < 0:
            raise RenderLimitError(
                f"{self.scope} would take more than its budget of operations (loop iterations, calls, filters; "
                f"at most {MAX_OPS} per render)"
            )
        if self.chars < 0:
            raise RenderLimitError(f"{self.scope} would build more than {MAX_BUILT:,} characters of values in all")
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"{self.scope} took longer than its time budget")


_ACTIVE: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("domain_lm_render_budget", default=None)


@contextmanager
def render_budget(ops: int = MAX_OPS, seconds: float = RENDER_SECONDS, scope: str = "one render") -> Iterator[RenderBudget]:
    """Run renders under a budget; nested inside another budget it also spends (and is capped by) the outer one."""
    outer = _ACTIVE.get()
    deadline, chars = time.monotonic() + seconds, MAX_BUILT
    if outer is not None and (outer.ops < ops or outer.deadline < deadline or outer.chars < chars):
        ops, deadline, chars, scope = min(ops, outer.ops), min(deadline, outer.deadline), min(chars, outer.chars), outer.scope
    budget = RenderBudget(ops, deadline, scope, chars)
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)
        if outer is not None:
            outer.ops -= ops - budget.ops
            outer.chars -= chars - budget.chars


def _charge(n: int = 1, size: int = 0) -> None:
    budget = _ACTIVE.get()
    if budget is not None:  # compile-time constant folding runs with no budget: only the size checks apply
        budget.charge(n, size)


# --------------------------------------------------------------------------- size checks


_SCALARS = frozenset({float, type(None), bool})


def weight(value: Any, limit: int = MAX_VALUE) -> int:
    """Size of a value: characters of a string, items plus their weights for containers, bytes of an
    integer. Stops counting past ``limit`` (callers only compare with it)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v)
            kinds = set(map(type, v))  # flat lists of one scalar kind are summed at C speed
            if kinds <= {str} or kinds <= {bytes}:
                total += sum(map(len, v))
            elif kinds <= {int, bool}:
                total += sum(map(int.bit_length, v)) // 8
            elif not kinds <= _SCALARS:
                stack.extend(v)
        elif isinstance(v, dict):
            total += len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, int):
            total += v.bit_length() // 8
        else:
            total += 1
    return total


def _refuse_size(what: str, size: int | float, limit: int, unit: str = "characters or items") -> None:
    if size > limit:
        raise RenderLimitError(f"{what} would build a value of {size:,.0f} {unit}; the limit is {limit:,}")


def built(value: Any, what: str) -> Any:
    """Account for a value an operation built: refuse it if it came out too large (for operations
    whose size is not known beforehand), and charge its size and one operation to the budget."""
    size = 0
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        if not isinstance(value, (str, bytes)) and len(value) > MAX_ITEMS:
            raise RenderLimitError(f"{what} built {len(value):,} items; the limit is {MAX_ITEMS:,}")
        size = weight(value)
        _refuse_size(what, size, MAX_VALUE)
    elif _is_int(value):
        size = value.bit_length() // 8
    _charge(1, size)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_or_0(v: Any) -> int:
    return v if _is_int(v) else 0


def _check_mul(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right):
        _refuse_size("multiplying these integers", left.bit_length() + right.bit_length(), MAX_INT_BITS, "bits")
        return
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and _is_int(n) and n > 0:
            if isinstance(seq, (list, tuple)):
                _refuse_size(f"repeating a list {n:,} times", len(seq) * n, MAX_ITEMS, "items")
            _refuse_size(f"repeating a value {n:,} times", weight(seq) * n, MAX_VALUE)


def _check_pow(base: Any, exp: Any) -> None:
    if _is_int(base) and _is_int(exp) and exp > 0 and abs(base) > 1:
        _refuse_size(f"{base} ** {exp}", base.bit_length() * exp, MAX_INT_BITS, "bits")


def _check_add(left: Any, right: Any) -> None:
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        _refuse_size("joining these lists", len(left) + len(right), MAX_ITEMS, "items")
    if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
        _refuse_size("joining these values", weight(left) + weight(right), MAX_VALUE)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: Any, args: Any) -> None:
    """``'%5s' % x``: widths and precisions are explicit numbers whose sum stays under the limit."""
    if not isinstance(fmt, str):
        return
    total = len(fmt) + weight(args)
    for m in _PERCENT_SPEC.finditer(fmt):
        for n in m.groups():
            if n == "*":
                raise RenderLimitError("'*' widths in %-formatting are not allowed in templates")
            total += int(n) if n else 0
    _refuse_size("this %-formatting", total, MAX_VALUE)


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``'{:>5}'.format(x)``: no nested (computed) format specs, and widths stay under the limit."""
    total = len(fmt) + weight(args) + weight(kwargs)
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # a malformed format string fails when it is called
    for _, _, spec, _ in fields:
        if spec and "{" in spec:
            raise RenderLimitError("nested format specs ('{:{width}}') are not allowed in templates")
        total += sum(int(n) for n in re.findall(r"\d+", spec or ""))
    _refuse_size("this str.format", total, MAX_VALUE)


def _replace_size(s: Any, old: Any, new: Any, count: Any) -> int:
    if not isinstance(s, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    hits = len(s) + 1 if old == "" else s.count(old)
    if _is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(0, len(new) - len(old))


def _width_check(name: str, width: Any) -> None:
    if _is_int(width):
        _refuse_size(f"{name}({width})", width, MAX_VALUE)


def bounded_list(items: Any, what: str) -> list[Any]:
    """``items`` as a list of at most ``MAX_ITEMS`` (an iterator is read only that far)."""
    out = list(itertools.islice(iter(items), MAX_ITEMS + 1))
    if len(out) > MAX_ITEMS:
        raise RenderLimitError(f"{what} got more than {MAX_ITEMS:,} items")
    return out


def _check_join(sep: Any, items: list[Any]) -> None:
    _refuse_size("join", weight(items) + len(str(sep)) * len(items), MAX_VALUE)


#: Pre-checks of str/bytes methods that can build much more than they are given: (self, bound args).
_METHOD_CHECKS: dict[str, Callable[[Any, list[Any], dict[str, Any]], None]] = {
    "center": lambda s, a, k: _width_check("center", a[0] if a else k.get("width")),
    "ljust": lambda s, a, k: _width_check("ljust", a[0] if a else k.get("width")),
    "rjust": lambda s, a, k: _width_check("rjust", a[0] if a else k.get("width")),
    "zfill": lambda s, a, k: _width_check("zfill", a[0] if a else k.get("width")),
    "expandtabs": lambda s, a, k: _refuse_size(
        "expandtabs", len(s) + s.count("\t" if isinstance(s, str) else b"\t") * _int_or_0((a or [k.get("tabsize", 8)])[0]), MAX_VALUE
    ),
    "replace": lambda s, a, k: _refuse_size("replace", _replace_size(s, *(list(a) + [None] * 3)[:3]), MAX_VALUE),
    "join": lambda s, a, k: _check_join(s, a[0]) if a else None,
    "format": lambda s, a, k: _check_str_format(s, tuple(a), k) if isinstance(s, str) else None,
    "format_map": lambda s, a, k: (
        _check_str_format(s, (), dict(a[0]) if a and isinstance(a[0], dict) else {}) if isinstance(s, str) else None
    ),
    "translate": lambda s, a, k: _refuse_size(
        "translate", len(s) * max([1] + [weight(v) for v in (a[0].values() if a and isinstance(a[0], dict) else [])]), MAX_VALUE
    ),
    "to_bytes": lambda s, a, k: _width_check("to_bytes", a[0] if a else k.get("length", 1)),
}


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Pre-check a call of an amplifying str/bytes/int method; returns the arguments to call it with
    (``join`` gets its items as a bounded list, so their number is known before joining)."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in a safe formatter
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    check = _METHOD_CHECKS.get(name)
    if check is None or not isinstance(owner, (str, bytes, int)) or isinstance(owner, bool):
        return args
    if name == "join" and args:
        args = (bounded_list(args[0], "join"), *args[1:])
    check(owner, list(args), kwargs)
    return args


# --------------------------------------------------------------------------- filters


def _filter_checks() -> dict[str, Callable[[dict[str, Any]], None]]:
    """Pre-checks of the built-in filters that can build much more than they are given (by argument name)."""

    def lines(s: Any) -> int:
        return str(s).count("\n") + 1

    def indent(a: dict[str, Any]) -> None:
        width = a.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        _refuse_size("indent", len(str(a["s"])) + lines(a["s"]) * per_line, MAX_VALUE)

    def slow(name: str, key: str) -> Callable[[dict[str, Any]], None]:
        return lambda a: _refuse_size(f"{name} on a text this long", len(str(a[key])), MAX_SLOW_FILTER_CHARS)

    def tojson(a: dict[str, Any]) -> None:
        if a.get("indent") is not None and (not _is_int(a["indent"]) or a["indent"] > MAX_JSON_INDENT):
            raise RenderLimitError(f"tojson indent must be an integer of at most {MAX_JSON_INDENT}")

    return {
        "center": lambda a: _width_check("center", a.get("width", 80)),
        "indent": indent,
        "wordwrap": slow("wordwrap", "s"),
        "urlize": slow("urlize", "value"),
        "batch": lambda a: _refuse_size("batch", a["linecount"] if _is_int(a["linecount"]) else 0, MAX_ITEMS),
        "slice": lambda a: _refuse_size("slice", a["slices"] if _is_int(a["slices"]) else 0, MAX_ITEMS),
        "replace": lambda a: _refuse_size("replace", _replace_size(a["s"], a["old"], a["new"], a.get("count")), MAX_VALUE),
        "format": lambda a: _check_percent_format(a["value"], a.get("kwargs") or a.get("args")),
        "join": lambda a: _check_join(a.get("d", ""), a["value"]),  # value: a bounded list (_MATERIALIZE)
        "tojson": tojson,
    }


#: Filters that consume their whole input: it is read into a bounded list first, so the checks know its size.
_MATERIALIZE = {"join": "value"}


def _guard_filter(name: str, func: Callable[..., Any], check: Callable[[dict[str, Any]], None] | None) -> Callable[..., Any]:
    signature = inspect.signature(func)  # of the plain function when Jinja wraps a sync/async pair
    # Jinja marks filters that take a context/environment first (``pass_eval_context`` etc.); an
    # async-aware wrapper may take one its plain function does not declare: skip it when binding.
    skip = int(getattr(func, "jinja_pass_arg", None) is not None and getattr(inspect.unwrap(func), "jinja_pass_arg", None) is None)

    @functools.wraps(func)  # keeps Jinja's pass_context/pass_environment marker, so Jinja calls it the same way
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            try:
                bound = signature.bind(*args[skip:], **kwargs)
            except TypeError:
                pass  # a wrong call fails in the filter itself, with its own message
            else:
                if name in _MATERIALIZE:
                    key = _MATERIALIZE[name]
                    bound.arguments[key] = bounded_list(bound.arguments[key], f"the {name} filter")
                    args, kwargs = (*args[:skip], *bound.args), bound.kwargs
                bound.apply_defaults()
                check(dict(bound.arguments))
        return built(func(*args, **kwargs), f"the {name} filter")

    return guarded


def _guard_iter(value: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the same items, each charged to the budget (the loop is the
    hot path: the clock is read every 64 items, the operation count on every one)."""
    budget = _ACTIVE.get()
    if budget is None:
        yield from value
        return
    for n, item in enumerate(value):
        budget.ops -= 1
        if budget.ops < 0 or not n & 63:
            budget.charge(0)  # raises when out of operations or past the deadline
        yield item


def _guard_concat(parts: list[Any]) -> str:
    """``a ~ b``: Jinja's own ``str_join``, with the size checked before joining."""
    texts = [str(p) for p in parts]
    _refuse_size("the ~ operator", sum(map(len, texts)), MAX_VALUE)
    return built("".join(texts), "the ~ operator")


_ITER_FILTER = "__budget_iter"
_CONCAT_FILTER = "__budget_concat"


class _Guard(NodeTransformer):
    """Rewrites a parsed template so that loops and ``~`` go through the budgeted helpers."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _ITER_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


# --------------------------------------------------------------------------- the environment


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """``ImmutableSandboxedEnvironment`` whose amplifying operations are size-checked and charged."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            optimized=False,  # no constant folding: nothing a template computes runs when it is saved
        )
        # lipsum(n) writes n paragraphs; nothing a prompt needs.
        self.globals.pop("lipsum", None)
        checks = _filter_checks()
        self.filters = {name: _guard_filter(name, f, checks.get(name)) for name, f in self.filters.items()}
        self.filters[_ITER_FILTER] = _guard_iter
        self.filters[_CONCAT_FILTER] = _guard_concat

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_mul(left, right)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "+":
            _check_add(left, right)
        elif operator == "%":
            _check_percent_format(left, right)
        return built(super().call_binop(context, operator, left, right), f"the {operator} operator")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        args = _check_call(__obj, args, kwargs)
        _charge()  # before the call too: a recursive macro must run out of budget, not of stack
        return built(super().call(__context, __obj, *args, **kwargs), "this call")

    def compile_guarded(self, ast: nodes.Template) -> jinja2.Template:
        """Compile a parsed template with its loops and ``~`` routed through the budget."""
        guarded = _Guard().visit(ast)
        guarded.set_environment(self)
        return self.from_string(guarded)


def render(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render, measuring the output as it is produced (``RenderLimitError`` past ``MAX_RENDER_CHARS``)."""
    chunks, size = [], 0
    for chunk in template.generate(**context):
        size += len(chunk)
        if size > MAX_RENDER_CHARS:
            raise RenderLimitError(f"rendering produced more than {MAX_RENDER_CHARS} characters")
        chunks.append(chunk)
    return "".join(chunks)


ENV = BudgetedSandbox()
