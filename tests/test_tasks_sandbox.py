"""The template sandbox under attack (issue 15, finding 3): every hostile body fails fast with a
TemplateError (at registration with file:line, or per request), and legitimate Jinja renders as before."""

from __future__ import annotations

import re
import time

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from domain_lm.tasks import TaskTemplate, TemplateError, TemplateRegistry
from domain_lm.tasks import sandbox as S
from domain_lm.tasks.yamlsrc import load_yaml
from tests.tasks_fixtures import line_of, mini

VARIANT = '      - "Is it so? {{ text }}"'
#: Generous against a loaded 2-core box; the measured times are a few to ~40 ms (see the report).
FAST = 0.5


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """First use imports and compiles lazily; time the attacks, not the warm-up."""
    TemplateRegistry().register(mini())


def evil(expr: str, max_length: int = 60_000) -> str:
    """MINI with variant 1 replaced by ``expr`` and the text input allowed up to ``max_length``."""
    return mini(**{VARIANT: f'      - "{expr}"', "    max_length: 50": f"    max_length: {max_length}"})


def register(text: str) -> tuple[TemplateError | None, float, TaskTemplate | None]:
    t0 = time.perf_counter()
    try:
        t = TemplateRegistry().register(text)
    except TemplateError as e:
        return e, time.perf_counter() - t0, None
    return None, time.perf_counter() - t0, t


# Bodies that must be refused when the template is saved (the examples trip them), with the line.
AT_REGISTRATION = [
    ("{{ (3**3000000) % 7 }}", "3 \\*\\* 3000000"),
    ("{{ 'x'*10**10 }}", "repeating a value"),
    ("{{ 1000000000000 * 'x' }}", "repeating a value"),
    ("{{ text*900000 }}", "repeating a value"),
    # Loops stop on the operation budget, or on the time budget first when the machine is busy.
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "operations|time budget"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "operations|time budget"),
    ("{{ 'x'|center(1000000000) }}", "center"),
    ("{{ '%999999999s' % text }}", "%-formatting"),
    ("{{ '%*s' % (10, text) }}", "'\\*' widths"),
    ("{{ '{:>999999999}'.format(text) }}", "str.format"),
    ("{{ '{:{w}}'.format(text, w=9) }}", "nested format"),
    ("{{ text.ljust(10**9) }}", "ljust"),
    ("{{ (1).to_bytes(10**9, 'big') }}", "to_bytes"),
    ("{{ [1]|batch(10**9, 'x')|list }}", "batch"),
    ("{{ range(10)|slice(10**9)|list }}", "slice"),
    ("{{ text|indent(10**8) }}", "indent"),
    ("{{ ([text]*100000)|join }}", "repeating a value"),
    ("{{ range(100000)|join(text) }}", "join would build"),
    ("{{ text.join(range(100000)|map('string')) }}", "join would build|operations|time budget"),
    ("{{ range(100000)|map('center', 999999)|list|length }}", "characters of values in all"),
    ("{% set ns = namespace(s=text) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", "~ operator"),
    (
        "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        "joining these lists|time budget",
    ),
    ("{% macro m(n) %}{% for i in range(9) %}{{ m(n) }}{% endfor %}{% endmacro %}{{ m(1) }}", "Recursion|operations|time budget"),
    ("{{ lipsum(100000) }}", "undeclared"),
]


@pytest.mark.parametrize("expr,why", AT_REGISTRATION, ids=[a for a, _ in AT_REGISTRATION])
def test_attack_fails_at_registration_fast_with_line(expr, why):
    text = evil(expr)
    err, seconds, _ = register(text)
    assert err is not None, f"{expr} was accepted"
    assert err.line == line_of(text, expr[:20]), str(err)
    assert re.search(why, str(err)), str(err)
    assert seconds < FAST, f"{expr}: {seconds:.3f}s"


# Bodies that pass registration on short examples but must fail per request on a 50k-character input.
AT_RENDER = [
    "{{ text*30 }}",  # the issue's `text*900000` on 1-character examples: 50k x 30 = 1.5M characters
    "{{ text|replace('', text*10) }}",
    "{% for c in text %}{% for d in text %}{% for e in text %}{% endfor %}{% endfor %}{% endfor %}",
    "{% for c in text %}{{ text }}{% endfor %}",
    "{{ text.replace('y', text) }}",
    "{{ text.expandtabs(10**6) }}",
]


@pytest.mark.parametrize("expr", AT_RENDER)
def test_attack_fails_per_request_fast(expr):
    err, _, t = register(evil(expr))
    assert err is None and t is not None, str(err)
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="exceeds the render budget|more than 1000000 characters") as e:
        t.render_messages({"text": "y\t" * 25_000}, variant=1)
    assert time.perf_counter() - t0 < FAST
    assert e.value.line == line_of(evil(expr), expr[:20])
    assert t.render_messages({"text": "ok"}, variant=1)  # the same template still serves small inputs


def test_nothing_is_computed_when_a_template_is_compiled():
    # Constant folding used to run these at save time; compiling must not evaluate them at all.
    for src in ("{{ (3**3000000) % 7 }}", "{{ 'x'*10**10 }}", "{{ 'x'|center(1000000000) }}", "{{ 'ab' ~ 'x'|center(10**9) }}"):
        t0 = time.perf_counter()
        S.ENV.compile_guarded(S.ENV.parse(src))
        assert time.perf_counter() - t0 < FAST, src


def test_time_budget_stops_expensive_operations():
    # Each count is cheap and builds almost nothing, many of them are not: the deadline stops the
    # render (not the op count, not the size budget). One count per character: the template's own
    # short examples render in microseconds (so loading it never depends on the machine's load).
    t = TaskTemplate.from_yaml(evil("{% for i in range(text|length) %}{{ text.count('y') }}{% endfor %}"))
    t0 = time.perf_counter()
    with S.render_budget(ops=10**9, seconds=0.05, scope="this request"):
        with pytest.raises(TemplateError, match="time budget"):
            t.render_messages({"text": "y" * 50_000}, variant=1)
    assert time.perf_counter() - t0 < FAST


def test_checking_a_template_has_one_budget_for_all_examples():
    # 400 examples x 2 variants x 20k loop steps: 16M operations, minutes without the total budget.
    body = evil("{% for i in range(20000) %}{% endfor %}{{ text }}")
    head, _, _ = body.partition("examples:\n")
    examples = "".join(f'  - {{lang: en, inputs: {{text: "case {i}"}}, output: approve}}\n' for i in range(400))
    text = head + "examples:\n" + examples + '  - {lang: zh, inputs: {text: "问"}, output: approve}\n'
    t0 = time.perf_counter()
    load_yaml(text, "big.yaml")
    parse_seconds = time.perf_counter() - t0
    err, seconds, _ = register(text)
    assert err is not None and "checking the template" in str(err), str(err)
    assert seconds < 2 * parse_seconds + S.CHECK_SECONDS + FAST


LEGIT = [
    "{% for x in items %}{{ loop.index }}. {{ x|upper }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{{ text ~ ' / ' ~ (items|join('; ')) }}",
    "{{ '%-8s|%5.1f' % (text, 3.14159) }} {{ '{}: {:>6}'.format(text, 42) }} {{ '%s'|format(text) }}",
    "{{ (items|length) * 2 + 2 ** 10 }} {{ text * 3 }} {{ [1, 2] + [3] }}",
    "{{ text|center(30)|trim }} {{ text|indent(2, first=True) }} {{ text|replace('a', 'b') }} {{ items|batch(2)|list }}",
    "{% macro shout(s) %}{{ s|upper }}!{% endmacro %}{{ shout(text) }} {{ dict(a=1)|tojson }} {{ range(3)|list }}",
    "{% for k, v in {'a': 1, 'b': 2}|dictsort %}{{ k }}={{ v }} {% else %}none{% endfor %}{{ items|slice(2)|list }}",
]


@pytest.mark.parametrize("src", LEGIT)
def test_legitimate_templates_render_exactly_as_plain_jinja(src):
    plain = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    ctx = {"text": "Loan approved", "items": ["alpha", "beta", "gamma"]}
    with S.render_budget():
        got = S.render(S.ENV.compile_guarded(S.ENV.parse(src)), ctx)
    assert got == plain.from_string(src).render(**ctx)


def test_weight_counts_nested_values():
    assert S.weight("abc") == 3 and S.weight(["ab", ["c"]]) == 2 + 2 + 1 + 1 and S.weight({"k": ["vv"]}) == 1 + 1 + 1 + 2
    assert S.weight([2**80, 1]) == 2 + 10 and S.weight(["x" * 10] * 1000) == 11_000
    # A list of long strings is as heavy as its text: repeating it is refused like repeating the text.
    assert S.weight([["x" * 10] * 1000] * 100, limit=100) > 100
