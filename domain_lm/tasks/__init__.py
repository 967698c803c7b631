"""Task templates: the typed contract between bank users, training data and the model.

A template (``task_templates/<name>.yaml``) declares a task's inputs, its instruction in several
phrasings per language, few-shot examples and its output contract (one class per output kind in
``tasks.contracts``: label / json / text). The same template renders SFT prompts, evaluation
prompts and serving prompts, and checks outputs.
"""

from domain_lm.tasks.contracts import CONTRACTS, DecodeConstraint, JsonOutput, LabelOutput, OutputContract, TextOutput
from domain_lm.tasks.errors import ContractError, InputError, TemplateError, UnknownTaskError
from domain_lm.tasks.registry import TemplateErrors, TemplateRegistry
from domain_lm.tasks.spec import Example, InputField, PromptSpec
from domain_lm.tasks.template import TaskTemplate

__all__ = [
    "CONTRACTS",
    "ContractError",
    "DecodeConstraint",
    "Example",
    "InputError",
    "InputField",
    "JsonOutput",
    "LabelOutput",
    "OutputContract",
    "PromptSpec",
    "TaskTemplate",
    "TemplateError",
    "TemplateErrors",
    "TemplateRegistry",
    "TextOutput",
    "UnknownTaskError",
]
