"""The FastAPI service: task endpoints, OpenAI-compatible chat, the console, health and metrics.

Layout (``create_app`` in ``app`` wires it)::

    tasks/     router (thin) -> TaskHandler: list, describe, answer one input or a batch, register templates;
               checker: the sandboxed template check (its own process, time and memory budget)
    openai/    router (thin) -> ChatHandler: /v1/models, /v1/chat/completions (plain and streamed)
    console/   router (thin) -> ConsoleHandler, editor, runs: the web console's JSON and pages
    health.py  /healthz, /readyz, /metrics
    handler.py Handler: what every feature shares; ``guarded(n)`` = admission of n slots + timeout + error mapping
    admission.py, errors.py, deps.py, middleware.py, logs.py, metrics.py, security.py, settings.py, state.py
    cli.py     ``domain-lm serve`` (registered through the ``domain_lm.commands`` entry point; also ``python -m services``)

``services`` builds on ``domain_lm``; ``domain_lm`` never imports ``services``.
"""
