"""``domain-lm tasks``: validate, list and render task templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from domain_lm.errors import DomainLMError
from domain_lm.core.progress import console

app = typer.Typer(no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", "-d", help="Template directory.")]


@app.command("validate")
def validate(
    directory: Annotated[Path, typer.Argument(help="Template directory, e.g. task_templates/.")] = Path("task_templates"),
    tokenizer: Annotated[
        Optional[Path], typer.Option("--tokenizer", help="Model or tokenizer directory: check token budgets with its exact counts.")
    ] = None,
) -> None:
    """Check every template: schema, Jinja, every variant rendered with the examples, contracts. Exit 1 on errors."""
    from domain_lm.tasks.validate import validate_dir

    tok = None
    if tokenizer is not None:
        from domain_lm.models.loading import load_tokenizer

        tok = load_tokenizer(tokenizer)
    report = validate_dir(directory, tokenizer=tok)
    for s in report.templates:
        variants = ", ".join(f"{lang}: {n} variants/{s.examples[lang]} examples" for lang, n in s.variants.items())
        console.print(f"[green]ok[/] {s.name} v{s.version} ({variants}; {s.renders} renders)  {escape(s.file)}", highlight=False)
    for w in report.warnings:
        console.print(f"[bold yellow]warning[/] {escape(w)}", highlight=False, soft_wrap=True)
    for e in report.errors:
        console.print(f"[bold red]error[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    if not report.ok:
        console.print(f"[red]{len(report.errors)} problem(s)[/] in {escape(str(directory))}", highlight=False)
        raise typer.Exit(1)
    console.print(f"{len(report.templates)} template version(s) valid", highlight=False)


@app.command("list")
def list_(directory: DirOpt = Path("task_templates")) -> None:
    """List the current templates: version, languages, output contract, metric, adapter."""
    from domain_lm.tasks import TemplateRegistry

    reg = TemplateRegistry.load(directory)
    table = Table("name", "version", "history", "languages", "output", "metric", "adapter")
    for t in reg:
        table.add_row(
            t.name,
            str(t.version),
            ",".join(map(str, reg.versions(t.name))),
            ",".join(t.languages),
            t.output.describe(),
            t.metric,
            t.adapter or "-",
        )
    console.print(table if len(reg) else f"[dim]No templates in {directory}.[/]")


@app.command("render")
def render(
    name: Annotated[str, typer.Argument(help="Task name, e.g. sentiment.")],
    input_: Annotated[str, typer.Option("--input", "-i", help="Inputs as JSON, or @file.json.")],
    lang: Annotated[str, typer.Option("--lang", help="Prompt language.")] = "en",
    variant: Annotated[int, typer.Option("--variant", help="Instruction phrasing index.")] = 0,
    few_shot: Annotated[int, typer.Option("--few-shot", help="Number of example turns.")] = 0,
    version: Annotated[Optional[int], typer.Option("--version", help="Template version (default: current).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the messages as JSON.")] = False,
    directory: DirOpt = Path("task_templates"),
) -> None:
    """Render the chat messages a task sends to the model for one input."""
    from domain_lm.tasks import TemplateRegistry

    raw = Path(input_[1:]).read_text(encoding="utf-8") if input_.startswith("@") else input_
    try:
        inputs = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DomainLMError(f'--input is not valid JSON ({e.msg} at char {e.pos}); give an object such as \'{{"text": "..."}}\'.') from None
    t = TemplateRegistry.load(directory).get(name, version)
    messages = t.render_messages(inputs, lang=lang, variant=variant, few_shot=few_shot)
    if as_json:
        print(json.dumps(messages, ensure_ascii=False, indent=2))
        return
    for m in messages:
        console.print(f"[bold cyan]── {m['role']}[/]", highlight=False)
        console.print(escape(m["content"]), highlight=False, soft_wrap=True)
    console.print(f"[dim]{escape(t.output.describe_answer(lang))}[/]", highlight=False)


@app.command("parse")
def parse(
    name: Annotated[str, typer.Argument(help="Task name, e.g. sentiment.")],
    text: Annotated[str, typer.Argument(help="A model answer to check, or @file.txt.")],
    lang: Annotated[str, typer.Option("--lang", help="Answer language.")] = "en",
    version: Annotated[Optional[int], typer.Option("--version", help="Template version (default: current).")] = None,
    directory: DirOpt = Path("task_templates"),
) -> None:
    """Check a model answer against a task's output contract; print the typed value as JSON (exit 1 if broken)."""
    from domain_lm.tasks import ContractError, TemplateRegistry

    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    t = TemplateRegistry.load(directory).get(name, version)
    try:
        value = t.parse_output(raw, lang=lang)
    except ContractError as e:
        console.print(f"[bold red]contract broken[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print(json.dumps(value, ensure_ascii=False))
