"""Task templates: the typed contract between bank users, training data and the model.

A template (``task_templates/<name>.yaml``) declares a task's inputs, its instruction in several
phrasings per language, few-shot examples and its output contract (label / json / text). The
same template renders SFT prompts, evaluation prompts and serving prompts, and checks outputs.
"""

from domain_lm.tasks.errors import ContractError, InputError, TemplateError, UnknownTaskError
from domain_lm.tasks.registry import TemplateErrors, TemplateRegistry
from domain_lm.tasks.spec import Example, InputField, OutputSpec, PromptSpec
from domain_lm.tasks.template import TaskTemplate

__all__ = [
    "ContractError",
    "Example",
    "InputError",
    "InputField",
    "OutputSpec",
    "PromptSpec",
    "TaskTemplate",
    "TemplateError",
    "TemplateErrors",
    "TemplateRegistry",
    "UnknownTaskError",
]
