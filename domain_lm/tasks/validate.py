"""Whole-directory checks behind ``domain-lm tasks validate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from domain_lm.tasks.contracts.base import Tokenizer
from domain_lm.tasks.errors import TemplateError
from domain_lm.tasks.registry import TemplateRegistry
from domain_lm.tasks.template import TaskTemplate


@dataclass
class TemplateSummary:
    name: str
    version: int
    file: str
    languages: list[str]
    variants: dict[str, int]
    examples: dict[str, int]
    renders: int  # prompts rendered while checking


@dataclass
class ValidationReport:
    templates: list[TemplateSummary] = field(default_factory=list)
    errors: list[TemplateError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a max_tokens too small for the longest label

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.templates)


def check_template(t: TaskTemplate) -> TemplateSummary:
    """Render every variant of every language with each example, alone and with all few-shot turns.

    Loading a template already renders each example once per variant and round-trips its output
    through the contract; this adds the few-shot path (every example as an assistant turn).
    """
    renders = 0
    for lang in t.languages:
        examples = t.examples_for(lang)
        for v in range(t.num_variants(lang)):
            for ex in examples:
                t.render_messages(ex.inputs, lang=lang, variant=v, few_shot=len(examples))
                renders += 1
    return TemplateSummary(
        name=t.name,
        version=t.version,
        file=t.file,
        languages=list(t.languages),
        variants={lang: t.num_variants(lang) for lang in t.languages},
        examples={lang: len(t.examples_for(lang)) for lang in t.languages},
        renders=renders,
    )


def validate_dir(directory: str | Path, tokenizer: Tokenizer | None = None) -> ValidationReport:
    """Check every template file in ``directory`` (and its version history); never raises for a bad file.

    Token budgets are checked with ``tokenizer``'s exact counts when given, else with an upper bound.
    """
    report = ValidationReport()
    directory = Path(directory)
    if not directory.is_dir():
        report.errors.append(TemplateError(f"template directory {directory} does not exist", str(directory)))
        return report
    reg = TemplateRegistry.load(directory, strict=False)
    report.errors.extend(reg.errors)
    for name in reg.names():
        for version in reg.versions(name):
            t = reg.get(name, version)
            try:
                report.templates.append(check_template(t))
            except TemplateError as e:
                report.errors.append(e)
            report.warnings.extend(t.budget_warnings(tokenizer))
    if not report.templates and not report.errors:
        report.errors.append(TemplateError(f"no templates (*.yaml) found in {directory}", str(directory)))
    return report
