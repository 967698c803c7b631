"""Output contracts, one class per output ``kind``, and the one registry of kinds.

To add a kind: write a module with an ``OutputContract`` subclass (``kind: Literal["mykind"]`` and
the abstract methods) and add one line to ``CONTRACTS``. Templates then accept ``output.kind:
mykind`` with that class's fields, and every caller (runner, data builders, eval) works through the
contract's methods. docs/templates.md shows an example.
"""

from __future__ import annotations

from typing import Annotated, Union, get_args

from pydantic import Field

from domain_lm.tasks.contracts.base import DecodeConstraint, OutputContract, Rejection
from domain_lm.tasks.contracts.jsondoc import JsonOutput
from domain_lm.tasks.contracts.label import LabelOutput
from domain_lm.tasks.contracts.text import TextOutput

#: Output kind -> contract class: the only place kinds are listed.
CONTRACTS: dict[str, type[OutputContract]] = {
    "label": LabelOutput,
    "json": JsonOutput,
    "text": TextOutput,
}

for _kind, _cls in CONTRACTS.items():
    if get_args(_cls.model_fields["kind"].annotation) != (_kind,):
        raise TypeError(f"{_cls.__name__}.kind must be Literal[{_kind!r}] to be registered as {_kind!r}")

#: The type of ``TemplateSpec.output``: the contract class chosen by ``kind``.
AnyContract = Annotated[Union[tuple(CONTRACTS.values())], Field(discriminator="kind")]  # noqa: UP007 - built from the registry

__all__ = ["CONTRACTS", "AnyContract", "DecodeConstraint", "JsonOutput", "LabelOutput", "OutputContract", "Rejection", "TextOutput"]
