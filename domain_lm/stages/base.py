"""Stage ``base``: make sure the base model is in the offline store, verified."""

from __future__ import annotations

from domain_lm.pipeline.stage import Stage, StageContext


def run(ctx: StageContext) -> None:
    from domain_lm.models import registry

    cfg = ctx.config.base_model
    path = registry.resolve(cfg.name, store=cfg.store)
    stored = registry.read_stored(path)
    res = ctx.result
    # The model stays in the store; the artefact records its absolute path.
    res.artefacts["model"] = str(path.resolve())
    res.inputs["base_model"] = stored.source_sha256 if stored else ""
    res.metrics["params"] = stored.params if stored else 0


STAGE = Stage(name="base", title="Base model", sections=("base_model",), outputs=("model",), run=run)
