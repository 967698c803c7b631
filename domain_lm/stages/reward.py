"""Stage ``reward``: preference pairs (files + bank-task pairs, optionally sampled from the upstream
model) -> the reward model (``train.reward``) -> margin histogram, curves, model card."""

from __future__ import annotations

from domain_lm.config import PipelineConfig
from domain_lm.pipeline.stage import Stage, StageContext
from domain_lm.pipeline.store import ModelCard


def data_hashes(config: PipelineConfig) -> dict[str, str]:
    """The preference files, and the task data when pairs are built from it (shared with ``dpo``)."""
    from domain_lm.data import preference, sft_data

    return {**preference.data_hashes(config), **(sft_data.data_hashes(config) if config.reward.from_tasks else {})}


def run(ctx: StageContext) -> None:
    from domain_lm.data import preference
    from domain_lm.train.common import plot_curves
    from domain_lm.train.reward import STATS_FILE, margin_histogram, train_reward_model

    cfg = ctx.config.reward
    upstream, model_path = ctx.inputs.model()
    engine = None
    if cfg.from_tasks and cfg.sample_k > 0:
        from domain_lm.inference import create_engine

        engine = create_engine(str(model_path), kind="hf")
    try:
        train_pairs, eval_pairs, counts = preference.build_preference_data(ctx.config, engine=engine)
    finally:
        if engine is not None:
            engine.close()
    out = ctx.out
    preference.save_pairs(train_pairs, out / "preferences" / "train.jsonl")
    preference.save_pairs(eval_pairs, out / "preferences" / "eval.jsonl")

    t = train_reward_model(
        model_path, train_pairs, eval_pairs, cfg, ctx.work_dir, out / "reward_model", ctx.resume, out / "train_log.jsonl", ctx.callbacks
    )
    margin_histogram(t.margins, out / "margin_hist.png")
    plot_curves(t.history, ["loss", "accuracy", "margin"], out / "curves.png", title="reward model training")

    res = ctx.result
    res.metrics.update(t.metrics)
    res.metrics.update({f"pairs/{k}": v for k, v in counts.items()})
    for name, rel in [("reward_model", "reward_model"), ("preferences", "preferences"), ("margin_hist", "margin_hist.png")]:
        ctx.add_artefact(name, rel)
    if (out / "curves.png").is_file():
        ctx.add_artefact("curves", "curves.png")
    res.inputs.update(data_hashes(ctx.config))
    ctx.set_model_card(
        ModelCard(
            title="reward model",
            base_model=str(model_path),
            method=f"Bradley-Terry pairwise loss, {cfg.peft.method}",
            description=f"Scores (prompt, answer) pairs; initialised from the {upstream.stage} model. "
            f"Reward mean/std on held-out pairs in reward_model/{STATS_FILE}.",
            data_notes=[f"{v} pairs of kind {k}" for k, v in sorted(counts.items())],
        )
    )


STAGE = Stage(
    name="reward",
    title="Reward model",
    sections=("reward", "tasks", "base_model"),
    outputs=("reward_model", "preferences"),
    run=run,
    data_hashes=data_hashes,
)
