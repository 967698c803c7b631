"""``python -m services [serve options]``: the same command as ``domain-lm serve``."""

import sys

from domain_lm.core.progress import console
from domain_lm.errors import DomainLMError
from services.cli import app


def main() -> None:
    try:
        app(prog_name="python -m services")
    except DomainLMError as e:  # one paragraph and exit 2, as the domain-lm command line does
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
