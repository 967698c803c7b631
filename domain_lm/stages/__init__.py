"""Thin stage glue: one module per pipeline stage, each exporting ``STAGE`` (a ``pipeline.stage.Stage``).

A stage reads its inputs from the context, calls the trainer or builder that does the work
(``domain_lm.train``, ``domain_lm.data``, ``domain_lm.eval``) and records artefacts, metrics and
its model card. The order of the stages and what each reads are in ``domain_lm.pipeline.graph``.
"""
