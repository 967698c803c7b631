"""``domain-lm tasks``: validate, list and render task templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from domain_lm.core.progress import console
from domain_lm.errors import DomainLMError

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


# --------------------------------------------------------------------------- teaching a task


def _json_object(value: str | None, option: str) -> dict[str, str]:
    if not value:
        return {}
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        raise DomainLMError(f"{option} is not valid JSON ({e.msg}); give an object such as '{{\"text\": \"sentence\"}}'.") from None
    if not isinstance(out, dict):
        raise DomainLMError(f"{option} must be a JSON object.")
    return {str(k): str(v) for k, v in out.items()}


def print_teach_result(result: dict, serving: dict | None) -> None:
    """The held-out comparison of a teaching job (what the service's job result holds)."""
    ex = result["examples"]
    console.print(
        f"version {result['version']}: {ex['uploaded']} examples ({ex['duplicates']} duplicates), "
        f"{ex['train']} train / {ex['held']} held out, scored on {ex['evaluated']}",
        highlight=False,
    )
    table = Table("system", result["metric"], "95% CI", "n", "ECE before -> after", "temperature", "seconds")
    for name in ("zero_shot", "few_shot", "adapter", "classical"):
        s = result["systems"].get(name)
        if s is None:
            continue
        c = s.get("calibration") or {}
        ece = f"{c['ece_before']:.3f} -> {c['ece_after']:.3f}" if "ece_after" in c else "-"
        temp = f"{c['temperature']:.2f}" if c.get("calibrated") else "-"
        table.add_row(name, f"{s['score']:.3f}", f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]", str(s["n"]), ece, temp, f"{s['seconds']:.1f}")
    console.print(table)
    for pair, d in result.get("diffs", {}).items():
        console.print(f"  {pair}: {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", highlight=False)
    if result.get("timings"):
        console.print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items()), highlight=False)
    if serving:
        console.print(f"[bold]serving[/]: {escape(serving['why'])}", highlight=False, soft_wrap=True)


def _train_remote(url: str, key: str | None, name: str, data: bytes, params: dict, fmt: str, poll_s: float) -> None:
    import time

    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ctype = {"csv": "text/csv", "json": "application/json"}.get(fmt, "application/jsonl")
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as c:
        r = c.post(f"/v1/tasks/{name}/examples", content=data, params=params, headers={"Content-Type": ctype})
        if r.status_code != 202:
            raise DomainLMError(f"the service refused the upload ({r.status_code}): {r.text[:2000]}")
        accepted = r.json()
        console.print(f"job {accepted['job']}: {accepted['train']} train / {accepted['held_out']} held-out examples", highlight=False)
        last = None
        while True:
            job = c.get(accepted["status_url"]).json()
            line = f"{job['state']} {job['phase']} {job['message']}"
            if line != last:
                console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(line)}", highlight=False)
                last = line
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(poll_s)
    if job["state"] != "succeeded":
        raise DomainLMError(f"the teaching job {job['state']}: {job.get('error')}")
    print_teach_result(job["result"], job["result"].get("serving"))


@app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="Task name (its template must exist).")],
    data: Annotated[Path, typer.Option("--data", help="Labelled examples: JSONL, JSON or CSV (one example per row).")],
    fmt: Annotated[Optional[str], typer.Option("--format", help="jsonl, json or csv (default: from the file name).")] = None,
    label_field: Annotated[str, typer.Option("--label-field", help="Column holding the label / answer.")] = "label",
    fields: Annotated[Optional[str], typer.Option("--fields", help="Template input -> column, as JSON.")] = None,
    label_map: Annotated[Optional[str], typer.Option("--label-map", help="Value in the file -> label, as JSON.")] = None,
    group_field: Annotated[Optional[str], typer.Option("--group-field", help="Column naming each row's document.")] = None,
    lang: Annotated[str, typer.Option("--lang", help="Language of the examples.")] = "en",
    no_adapter: Annotated[bool, typer.Option("--no-adapter", help="No LoRA: few-shot pool and classical model only.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Leave invalid rows out instead of stopping.")] = False,
    url: Annotated[Optional[str], typer.Option("--url", help="Teach a running service (it hot-loads the adapter).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", envvar="DOMAIN_LM_API_KEY", help="API key (admin for the task).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Without --url: the model the service serves.")] = None,
    store: Annotated[Optional[Path], typer.Option("--store", help="Without --url: the task store (default DIR/.versions/adapters).")] = (
        None
    ),
    engine: Annotated[str, typer.Option("--engine", help="Without --url: engine that scores the systems (hf or vllm).")] = "hf",
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="TeachConfig override KEY=VALUE, e.g. --set epochs=2.")] = None,
    directory: DirOpt = Path("task_templates"),
) -> None:
    """Teach a task from labelled examples: a LoRA adapter, few-shot pool and classical model, scored on held-out examples.

    With --url the running service does it (POST /v1/tasks/NAME/examples) and serves the adapter without a restart;
    otherwise it runs here, writing the version into the task store that `domain-lm serve` loads at start.
    """
    fmt = fmt or {".csv": "csv", ".json": "json"}.get(data.suffix.lower(), "jsonl")
    if fmt not in ("jsonl", "json", "csv"):
        raise DomainLMError(f"--format must be jsonl, json or csv, not {fmt!r}.")
    if not data.is_file():
        raise DomainLMError(f"--data {data} is not a file.")
    raw = data.read_bytes()
    fmap, lmap = _json_object(fields, "--fields"), _json_object(label_map, "--label-map")
    if url is not None:
        params = {"label_field": label_field, "lang": lang, "adapter": str(not no_adapter).lower()}
        params["skip_invalid"] = str(skip_invalid).lower()
        params.update({k: v for k, v in (("fields", fields), ("label_map", label_map), ("group_field", group_field)) if v})
        _train_remote(url, key, name, raw, params, fmt, 2.0)
        return
    if model is None:
        raise DomainLMError("Give --url (a running service) or --model (the model to teach, locally).")
    _train_local(name, raw, fmt, fmap, lmap, label_field, group_field, lang, not no_adapter, skip_invalid, model, store, engine,
                 overrides or [], directory)


def _train_local(
    name: str,
    raw: bytes,
    fmt: str,
    fmap: dict[str, str],
    lmap: dict[str, str],
    label_field: str,
    group_field: str | None,
    lang: str,
    adapter: bool,
    skip_invalid: bool,
    model: str,
    store: Path | None,
    engine: str,
    overrides: list[str],
    directory: Path,
) -> None:
    """Teach here: the same job as the service's, with a local engine scoring the systems."""
    import os

    from domain_lm.config import TaskDataset
    from domain_lm.inference import create_engine
    from domain_lm.inference.taught import plan_for
    from domain_lm.models import registry as model_registry
    from domain_lm.tasks import TemplateRegistry
    from domain_lm.tasks.adapter_store import AdapterStore
    from domain_lm.train.task_adapter import TeachConfig, parse_examples, read_rows
    from domain_lm.train.teach import TeachJob, report_summary, teach

    reg = TemplateRegistry.load(directory)
    t = reg.get(name)
    mapping = TaskDataset(
        task=name, path="upload", fields=fmap, label_field=label_field, label_map=lmap, group_field=group_field, lang=lang
    )
    parsed = parse_examples(t, read_rows(raw, fmt), mapping)  # type: ignore[arg-type]
    if parsed.problem_count:
        for row, msg in parsed.problems:
            console.print(f"[yellow]row {row}[/]: {escape(msg)}", highlight=False, soft_wrap=True)
        if not skip_invalid or not parsed.records:
            raise DomainLMError(f"{parsed.problem_count} of {parsed.rows} rows cannot be used; fix them or pass --skip-invalid.")
    values: dict[str, str] = {}
    for item in overrides:
        k, sep, v = item.partition("=")
        if not sep:
            raise DomainLMError(f"--set {item!r} must look like KEY=VALUE.")
        values[k] = v
    cfg = TeachConfig.model_validate({"threads": os.cpu_count() or 1, **values, "adapter": adapter})
    model_dir = str(model_registry.resolve(model)) if not Path(model).is_dir() else model
    root = store or (reg.store.root if reg.store is not None else directory / ".versions") / "adapters"
    task_store = AdapterStore(root)
    opts = {"lora_slots": 2} if engine == "vllm" else {}
    eng = create_engine(model_dir, kind=engine, adapters=task_store.adapters(), **opts)  # type: ignore[arg-type]
    try:
        job = TeachJob(t, parsed.records, task_store, model_dir, eng, cfg, author=os.environ.get("USER", "cli"),
                       progress=lambda phase, f, msg: console.print(f"[dim]{phase}[/] {escape(msg)}", highlight=False))
        report = teach(job)
        serving = plan_for(t, task_store.current(name), eng.adapters).as_dict()
    finally:
        eng.close()
    print_teach_result(report_summary(report), serving)
    console.print(f"written to {escape(str(root / name / str(report['version'])))}", highlight=False)
