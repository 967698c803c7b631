"""CPU runtime settings: the thread tuner's choices on simulated quiet and busy machines, the
thread count from the environment and the cgroup quota, and the allocator preload value."""

from __future__ import annotations

import pytest
import torch

from domain_lm.train import runtime as R

TOKENS = 600  # per step


def _simulate(tuner: R.ThreadTuner, seconds, steps: int, start: int = 2) -> list[int]:
    """Run ``steps`` steps; ``seconds(threads, step)`` is the step time. Returns the threads per step."""
    used, threads = [], start
    for k in range(steps):
        used.append(threads)
        threads = tuner.observe(threads, seconds(threads, k), TOKENS)
    return used


def quiet(threads: int, step: int) -> float:
    return {2: 2.0, 1: 3.6}[threads] + (10.0 if step == 0 else 0.0)  # the first step warms up


def busy(threads: int, step: int) -> float:
    return {2: 29.0, 1: 6.5}[threads]  # measured at load ~7 on the shared host


def test_quiet_machine_keeps_all_cpus():
    assert _simulate(R.ThreadTuner([2, 1]), quiet, 40) == [2] * 40


def test_busy_machine_moves_to_one_thread_and_back_when_quiet():
    def load_comes_and_goes(threads, step):
        return busy(threads, step) if 5 <= step < 40 else quiet(threads, step)

    used = _simulate(R.ThreadTuner([2, 1], probe_every=10), load_comes_and_goes, 60)
    assert used[:6] == [2] * 6  # quiet start, then the load arrives at step 5
    assert used[7:40].count(1) >= 30  # it tried 1 thread at once and kept it
    assert used[6:16] == [1] * 10 and used[16] == 2  # kept 1, re-checked 2 after probe_every steps
    assert used[46:56] == [2] * 10  # the first re-check after the load left (step 40) went back to 2
    assert used[56:].count(1) <= 1  # and 1 is only re-checked now and then


def test_busy_at_start_measures_both_counts_first():
    used = _simulate(R.ThreadTuner([2, 1], probe_first=True), busy, 10)
    assert used[:3] == [2, 2, 1]  # warm-up, measure 2, measure 1
    assert used[3:] == [1] * 7


def test_a_probe_replaces_the_stale_average():
    tuner = R.ThreadTuner([2, 1], probe_every=3, warmup=0, probe_first=True)
    assert tuner.observe(2, 29.0, TOKENS) == 1  # busy: 2 threads measured, now measure 1
    assert tuner.observe(1, 6.5, TOKENS) == 1  # 1 is faster
    assert tuner.observe(1, 3.6, TOKENS) == 1  # the machine got quiet
    assert tuner.observe(1, 3.6, TOKENS) == 2  # periodic re-check of 2 threads
    # 2.0 s blended with the stale 29 s would lose to 1 thread's 3.6 s; the fresh measurement wins
    assert tuner.observe(2, 2.0, TOKENS) == 2


def test_one_option_never_changes_and_warmup_is_ignored():
    assert _simulate(R.ThreadTuner([1]), busy, 5, start=1) == [1] * 5
    tuner = R.ThreadTuner([2, 1], warmup=1)
    assert tuner.observe(2, 1000.0, TOKENS) == 2 and not tuner.best


def test_configure_threads_from_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(R.THREADS_ENV, "1")
        assert R.configure_threads() == 1
        assert R.configure_threads(2) == 2  # an explicit argument wins over the environment
        monkeypatch.setenv(R.THREADS_ENV, "many")
        with pytest.raises(ValueError, match="whole number"):
            R.configure_threads()
    finally:
        torch.set_num_threads(before)


def test_cgroup_quota_caps_the_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert R._cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert R._cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert R._cgroup_cpu_quota(v1) == 4.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert R._cgroup_cpu_quota(v1) is None
    assert R.available_cpus() >= 1


def test_allocator_preload_value(tmp_path):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    dirs = (str(tmp_path),)
    lib = str(tmp_path / "libjemalloc.so.2")
    assert R.allocator_preload("jemalloc", None, dirs) == lib
    assert R.allocator_preload("jemalloc", f"/x/libfoo.so:{lib}", dirs) == f"{lib}:/x/libfoo.so"  # first, once
    assert R.allocator_preload("tcmalloc", None, dirs) is None  # not installed there
    with pytest.raises(ValueError, match="unknown allocator"):
        R.allocator_library("hoard")
    assert R.active_allocator() in ("glibc", *R.ALLOCATORS)


def test_uniform_dropout_has_dropout_statistics_and_gradient():
    from domain_lm.train.dropout import UniformDropout

    torch.manual_seed(0)
    drop = UniformDropout(0.2)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.8, abs=0.005)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.8))  # inverted scaling: same expectation
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient flows through the kept elements, scaled
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError):
        UniformDropout(1.0)


def test_lora_dropouts_are_swapped_and_the_eval_model_is_unchanged():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from domain_lm.train.dropout import UniformDropout, use_uniform_lora_dropout

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(0, 64, (2, 7))
    model.eval()
    before = model(input_ids=ids).logits
    assert use_uniform_lora_dropout(model) == 2 * 7  # q k v o gate up down in two layers
    assert sum(isinstance(m, UniformDropout) for m in model.modules()) == 14
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    assert torch.equal(model(input_ids=ids).logits, before)
    model.train()
    assert not torch.equal(model(input_ids=ids).logits, before)  # dropout is live in training


def test_thread_tuning_callback_switches_and_restores():
    before = torch.get_num_threads()
    tokens = {"n": 0}
    cb = R.ThreadTuning(R.ThreadTuner([2, 1], warmup=0, probe_first=True), lambda: tokens["n"])
    try:
        torch.set_num_threads(2)
        cb.on_train_begin(None, None, None)
        cb.on_step_begin(None, None, None)
        tokens["n"] += TOKENS
        cb.on_step_end(None, type("State", (), {"global_step": 1})(), None)
        assert torch.get_num_threads() == 1  # probe_first: the second count is measured next
        cb.on_train_end(None, None, None)
        assert torch.get_num_threads() == 2  # what the process had before training
    finally:
        torch.set_num_threads(before)


def test_threads_are_tuned_only_where_other_work_loads_the_host(monkeypatch):
    # A quiet host keeps every CPU (a task mix's own step spread once read as load); a loaded one
    # measures each count first.
    monkeypatch.delenv(R.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(R, "available_cpus", lambda: 2)
    monkeypatch.setattr(R.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(R.os, "getloadavg", lambda: (2.2, 2.0, 2.0))  # the previous stage's own load
    assert R.thread_tuning(lambda: 0, world_size=1) is None
    monkeypatch.setattr(R.os, "getloadavg", lambda: (7.0, 6.0, 5.0))
    cb = R.thread_tuning(lambda: 0, world_size=1)
    assert cb is not None and cb.tuner.pending == [1]
