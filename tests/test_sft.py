"""SFT on a tiny random Llama: it learns, it resumes exactly, LoRA/full, special tokens train."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from train.sft import SFTConfig, SFTTrainer, length_grouped_batches, split_examples, train_sft  # noqa: E402


def make_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 10 + i, 20 + 3 * i
        parts = [{"type": "text", "text": "Let me compute.\n"},
                 {"type": "call", "tool": "python", "arg": f"print({a} * {b})"},
                 {"type": "result", "text": f"{a * b}\n"}, {"type": "text", "text": f"It is {a * b}.\n"},
                 {"type": "answer", "text": str(a * b)}]
        rows.append({"id": f"r{i}", "family": "arith", "tools": ["python"], "messages": [
            {"role": "system", "content": "Use tools."}, {"role": "user", "content": f"What is {a} * {b}?"},
            {"role": "assistant", "content": parts}]})
    return rows


def cfg_for(tiny_model_dir, out, **kw) -> SFTConfig:
    base = dict(model=str(tiny_model_dir), output_dir=str(out), tools=["python"], batch_size=2, grad_accum=2,
                max_steps=6, lr=5e-3, warmup_steps=1, eval_fraction=0.2, eval_every=3, save_every=0,
                progress=False, lora_r=4, lora_alpha=8, seed=3, threads=1, precision="fp32")
    base.update(kw)
    return SFTConfig(**base)


def test_split_and_batches_are_pure_functions():
    rows = make_rows(40)
    tr, ev = split_examples(rows, 0.25)
    assert len(tr) + len(ev) == 40 and ev and split_examples(rows, 0.25) == (tr, ev)
    lengths = [i % 7 + 1 for i in range(40)]
    b1 = length_grouped_batches(lengths, 4, seed=5)
    assert b1 == length_grouped_batches(lengths, 4, seed=5) != length_grouped_batches(lengths, 4, seed=6)
    assert sorted(i for b in b1 for i in b) == list(range(40))


def test_sft_lora_lowers_loss_and_changes_only_adapter(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", max_steps=30, lr=3e-2, lora_r=8, eval_every=0)
    trainer = SFTTrainer(cfg, make_rows())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.fit()
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert changed and all("lora_" in n for n in changed)
    losses = [h["loss"] for h in trainer.history if h.get("loss") is not None]
    # a random tiny model with a tied, frozen output layer has bounded logits: LoRA moves the loss
    # less than full fine-tuning does, but clearly
    assert sum(losses[-5:]) / 5 < summary["first_loss"] - 0.3
    out = tmp_path / "run"
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "loss.png").stat().st_size > 1000
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,loss,eval_loss,lr,seconds"
    assert json.loads((out / "config.json").read_text())["lora_r"] == 8


def test_lora_layers_trains_only_the_top_layers(tiny_model_dir, tmp_path):
    from agent.errors import ConfigError

    cfg = cfg_for(tiny_model_dir, tmp_path / "run", max_steps=4, lr=3e-2, eval_every=0, lora_layers=1)
    trainer = SFTTrainer(cfg, make_rows())
    lora = [n for n, _ in trainer.model.named_parameters() if "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)  # the tiny model has layers 0 and 1
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(".layers.1." in n and "lora_" in n for n in changed)
    with pytest.raises(ConfigError, match="exceeds"):
        SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "bad", lora_layers=3), make_rows())


def test_full_finetune_changes_base_weights(tiny_model_dir, tmp_path):
    summary = train_sft(cfg_for(tiny_model_dir, tmp_path / "full", lora=False, max_steps=3, lr=1e-3), make_rows())
    assert summary["steps"] == 3 and (tmp_path / "full" / "model" / "config.json").exists()
    from agent.backends.transformers import load_hf

    m0, _ = load_hf(tiny_model_dir, device="cpu", dtype="float32")
    m1, _ = load_hf(tmp_path / "full" / "model", device="cpu", dtype="float32")
    w0, w1 = m0.model.layers[0].mlp.up_proj.weight, m1.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w0, w1)


def test_killed_run_resumes_to_identical_weights(tiny_model_dir, tmp_path):
    rows = make_rows()
    whole = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "a"), rows)
    whole.fit()
    want = whole.trainable_state()

    first = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "b"), rows)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    opt_state = {k: v["exp_avg"].clone() for k, v in first.opt.state_dict()["state"].items()}
    del first  # the process dies here; only the checkpoint survives

    second = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "b"), rows)
    assert second.maybe_resume() and second.step == 3
    restored = second.opt.state_dict()["state"]
    assert all(torch.equal(restored[k]["exp_avg"], v) for k, v in opt_state.items())
    assert second.sched.scheduler.last_epoch == 3
    summary = second.fit()
    assert summary["steps"] == 6 and summary["steps_this_run"] == 3
    got = second.trainable_state()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_a_resumed_run_reports_the_time_of_the_whole_run(tiny_model_dir, tmp_path):
    rows = make_rows()
    first = SFTTrainer(cfg_for(tiny_model_dir, tmp_path, max_steps=3, save_every=1, eval_every=0), rows)
    first.fit()
    before = first.history[-1]["seconds"]  # the clock as the last checkpoint saved it
    del first  # killed after its last checkpoint; a longer run resumes from it
    second = SFTTrainer(cfg_for(tiny_model_dir, tmp_path, max_steps=5, save_every=1, eval_every=0), rows)
    summary = second.fit()
    assert summary["steps_this_run"] == 2
    assert summary["seconds"] - summary["seconds_this_run"] == pytest.approx(before, abs=0.01)  # clock goes on
    seconds = [h["seconds"] for h in second.history if "loss" in h]
    assert seconds == sorted(seconds)  # the loss curve's time axis never jumps back at the resume


def test_new_tag_tokens_are_trained_with_lora(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "tok", add_special_tokens=True, max_steps=4, eval_every=0)
    trainer = SFTTrainer(cfg, make_rows())
    assert trainer.new_ids and trainer.renderer.tags_special()
    emb = trainer.model.get_input_embeddings()
    before = emb(torch.tensor(trainer.new_ids + [5, 6])).detach().clone()
    trainer.fit()
    after = emb(torch.tensor(trainer.new_ids + [5, 6])).detach()
    k = len(trainer.new_ids)
    assert not torch.allclose(before[:k], after[:k])  # the new tag rows learnt
    assert torch.equal(before[k:], after[k:])  # the old vocabulary is untouched


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_model_dir, tmp_path):
    from train.sft import _collate, _shared_prefix

    rows = make_rows(4)
    for r in rows:
        r["messages"][0]["content"] = "You can use tools. " * 12  # a long shared system prompt
    results = []
    for share in (False, True):
        t = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / str(share), share_prefix=share, batch_size=4), rows)
        batch = _collate(t.train_feats[:3], t.tok.pad_token_id, torch)
        if share:
            assert _shared_prefix(batch["input_ids"], batch["labels"]) > 40
        loss, n = t._loss_sum(batch)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None}
        results.append((float(loss.detach()), n, grads))
    (l0, n0, g0), (l1, n1, g1) = results
    assert n0 == n1 and abs(l0 - l1) < 1e-4 * abs(l0)
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-4) for k in g0)


def test_a_batch_that_mixes_system_prompts_shares_each_prompt_within_its_group(tiny_model_dir, tmp_path):
    """Rows with two different system prompts in one batch: each group runs its own prompt once, and
    the step (loss, updated weights) equals the one without any prefix sharing."""
    rows = make_rows(8)
    for i, r in enumerate(rows):
        r["messages"][0]["content"] = ("You can use tools. " if i % 2 else "Answer with care. ") * 12
    out = []
    for share in (False, True):
        t = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / str(share), share_prefix=share, batch_size=8, grad_accum=1,
                                eval_fraction=0.0, lr=1e-2), rows)
        micro = t.step_batches(0)[0]
        chunks = t._chunks(micro)
        assert sorted(i for c in chunks for i in c) == sorted(micro)
        if share:
            assert len(chunks) == 2 and all(len({i % 2 for i in c}) == 1 for c in chunks)
        out.append((t.train_step(), t.trainable_state()))
    (l0, w0), (l1, w1) = out
    assert l0 == pytest.approx(l1, rel=1e-5)
    assert all(torch.allclose(w0[k], w1[k], atol=1e-6) for k in w0)


def test_prefix_groups_keep_rows_of_one_prompt_together_and_split_different_prompts():
    from train.render import IGNORE_INDEX, Features
    from train.sft import prefix_groups

    def row(prompt: list[int], rest: int) -> Features:
        ids = prompt + [7] * rest
        return Features(ids, [IGNORE_INDEX] * len(prompt) + [7] * rest)

    a, b = list(range(100, 160)), list(range(100, 120)) + list(range(300, 340))  # share 20 tokens only
    feats = [row(a + [1], 5), row(b + [2], 5), row(a + [3], 6), row(b + [4], 4), row(a + [5], 5)]
    groups = prefix_groups(feats)
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1, 3]]
    assert prefix_groups(feats[:1]) == [[0]]


def _rows_of_different_lengths() -> list[dict]:
    rows = make_rows(4)
    for i, r in enumerate(rows):
        r["messages"][-1]["content"][0]["text"] = "Let me compute this carefully. " * (1 + 3 * i) + "\n"
    return rows


def test_loss_is_on_model_tokens_only_never_padding_prompt_or_tool_results(tiny_model_dir, tmp_path):
    """The real loss of a right-padded batch equals a cross-entropy computed by hand, row by row without
    padding, over exactly the positions whose token the model wrote (Trajectory source ``model``)."""
    from train.render import IGNORE_INDEX
    from train.sft import _collate

    t = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "mask", share_prefix=False, eval_fraction=0.0), make_rows(1))
    rows = _rows_of_different_lengths()
    trajs = [t.renderer.trajectory(r) for r in rows]
    feats = [t.renderer.features(r) for r in rows]
    assert len({len(f) for f in feats}) == len(feats)  # every row but the longest is padded
    batch = _collate(feats, t.tok.pad_token_id, torch)
    want_sum, want_n = 0.0, 0
    for b, traj in enumerate(trajs):
        sources = [s.source for s in traj.segments for _ in s.token_ids]
        assert {"prompt", "result", "model"} <= set(sources)
        trained = [i for i, s in enumerate(sources) if s == "model"]
        labels = batch["labels"][b].tolist()
        assert [i for i, x in enumerate(labels) if x != IGNORE_INDEX] == trained  # padding, prompt, results: none
        ids = torch.tensor([traj.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(t.model(input_ids=ids).logits[0].float(), -1)
        want_sum -= sum(float(logp[i - 1, traj.token_ids[i]]) for i in trained)
        want_n += len(trained)
    with torch.no_grad():
        loss, n = t._loss_sum(batch)
    assert n == want_n
    assert float(loss) == pytest.approx(want_sum, rel=1e-4)


def test_sft_step_raises_no_future_warning(tiny_model_dir, tmp_path):
    """A training step and an eval pass, the shared-prefix path (KV cache) included, with FutureWarning
    as an error. (peft's own call of a deprecated transformers API while wrapping the model, before
    any step, is not ours and stays outside.)"""
    import warnings

    from train.sft import _collate, _shared_prefix

    rows = make_rows(6)
    for r in rows:
        r["messages"][0]["content"] = "You can use tools. " * 12
    t = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "warn", batch_size=3, grad_accum=1, eval_fraction=0.3), rows)
    first = _collate([t.train_feats[i] for i in t.step_batches(0)[0]], t.tok.pad_token_id, torch)
    assert _shared_prefix(first["input_ids"], first["labels"]) > 0  # the cached-prefix forward runs
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loss = t.train_step()
        assert t.eval_feats and t.evaluate() > 0
    assert loss > 0


def test_long_micro_batches_split_by_token_budget_give_the_same_step(tiny_model_dir, tmp_path):
    """``max_batch_tokens`` runs a micro-batch in row groups (less memory for long examples): the
    loss is a token sum over the whole step, so the update equals the unsplit one."""
    rows = _rows_of_different_lengths() * 2
    weights = []
    for budget in (0, 64):
        t = SFTTrainer(cfg_for(tiny_model_dir, tmp_path / str(budget), batch_size=8, max_batch_tokens=budget,
                               eval_fraction=0.0, lr=1e-2), rows)
        if budget:
            assert len(t._chunks(t.step_batches(0)[0])) > 2
        loss = t.train_step()
        weights.append((loss, t.trainable_state()))
    (l0, w0), (l1, w1) = weights
    assert l0 == pytest.approx(l1, rel=1e-5)
    assert all(torch.allclose(w0[k], w1[k], atol=1e-6) for k in w0)
    assert any(not torch.allclose(w0[k], SFTTrainer(cfg_for(tiny_model_dir, tmp_path / "init", eval_fraction=0.0),
                                                    rows).trainable_state()[k]) for k in w0)  # it did move


def test_precision_auto_uses_bf16_where_the_cpu_has_it(tmp_path):
    from agent.errors import ConfigError
    from train.sft import mixed_precision

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert mixed_precision("auto", cpu=True, cpuinfo=with_bf16) == "bf16"
    assert mixed_precision("auto", cpu=True, cpuinfo=without) == "no"
    assert mixed_precision("auto", cpu=True, cpuinfo=tmp_path / "missing") == "no"
    assert mixed_precision("auto", cpu=False, cpuinfo=without) == "bf16"  # a GPU
    assert mixed_precision("fp32", cpu=True, cpuinfo=with_bf16) == "no"
    assert mixed_precision("bf16", cpu=True, cpuinfo=without) == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        mixed_precision("fp16", cpu=True)


def test_bf16_on_cpu_runs_the_matrices_in_bf16_and_learns(tiny_model_dir, tmp_path):
    cfg = cfg_for(tiny_model_dir, tmp_path / "run", max_steps=20, lr=3e-2, lora_r=8, eval_every=0, precision="bf16")
    trainer = SFTTrainer(cfg, make_rows())
    dtypes = set()
    layer = trainer.model.get_base_model().model.layers[0].mlp.down_proj
    hook = layer.register_forward_hook(lambda mod, args, out: dtypes.add(out.dtype))
    summary = trainer.fit()
    hook.remove()
    assert dtypes == {torch.bfloat16} and summary["precision"] == "bf16"
    losses = [h["loss"] for h in trainer.history if h.get("loss") is not None]
    assert sum(losses[-5:]) / 5 < summary["first_loss"] - 0.3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay fp32
