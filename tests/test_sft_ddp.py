"""SFT under DDP (two CPU processes, gloo, the real accelerate wrappers): the same weights, losses and
learning rates as one process running both processes' micro-batches, with uneven token counts."""

from __future__ import annotations

import json
import socket

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from train.sft import SFTConfig, SFTTrainer, ddp_token_scale  # noqa: E402

STEPS = 3


def uneven_rows(n: int = 16) -> list[dict]:
    """Examples whose trained parts differ a lot in length, so micro-batches differ in tokens."""
    rows = []
    for i in range(n):
        words = " ".join(["and the result of it"] * (1 + (i * 7) % 9))
        rows.append({"id": f"u{i}", "messages": [
            {"role": "system", "content": "Use tools."}, {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": [{"type": "text", "text": f"{words}.\n"},
                                              {"type": "answer", "text": str(i)}]}]})
    return rows


def config(model_dir, out, grad_accum: int) -> SFTConfig:
    return SFTConfig(model=str(model_dir), output_dir=str(out), tools=["python"], batch_size=2, grad_accum=grad_accum,
                     max_steps=0, epochs=3.0, lr=2e-2, warmup_steps=1, eval_fraction=0.0, save_every=0,
                     progress=False, lora_r=4, lora_alpha=8, seed=1, threads=1, share_prefix=False,
                     group_by_length=False, device="cpu", precision="fp32")


def _run(trainer: SFTTrainer) -> dict:
    losses, lrs = [], []
    for _ in range(STEPS):
        losses.append(trainer.train_step())
        lrs.append(trainer.sched.get_last_lr()[0])
    return {"losses": losses, "lrs": lrs, "total_steps": trainer.total_steps}


def _worker(model_dir: str, out: str) -> None:  # runs in each DDP process
    from pathlib import Path

    from accelerate.state import AcceleratorState, GradientState

    # a forked child inherits accelerate's process-wide singletons from earlier tests in the parent
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    trainer = SFTTrainer(config(model_dir, Path(out) / "ddp", grad_accum=1), uneven_rows())
    rank = trainer.accel.process_index
    got = _run(trainer)
    got["world"] = trainer.accel.num_processes
    got["local_tokens"] = sum(trainer.train_feats[i].n_target for s in range(STEPS)
                              for b in trainer.step_batches(s) for i in b)
    torch.save(trainer.trainable_state(), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(got))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, args, nprocs: int) -> None:
    """accelerate's ``debug_launcher`` with a free port (its fixed 29500 would clash with a concurrent run)."""
    import tempfile

    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    with tempfile.NamedTemporaryFile() as rdv, patch_environment(
            world_size=nprocs, master_addr="127.0.0.1", master_port=str(_free_port()),
            accelerate_mixed_precision="no", accelerate_debug_rdv_file=rdv.name, accelerate_use_cpu="yes",
            gloo_socket_ifname="lo", omp_num_threads=1):
        start_processes(PrepareForLaunch(fn, debug=True), args=args, nprocs=nprocs, start_method="fork")


def test_token_scale_gives_the_global_token_mean_with_uneven_processes():
    sums, counts = [3.0, 40.0, 5.0], [2, 30, 1]  # per-process summed token losses and token counts
    scale = ddp_token_scale(sum(counts), len(counts))
    ddp_average = sum(s * scale for s in sums) / len(sums)  # what DDP's gradient all-reduce computes
    assert ddp_average == pytest.approx(sum(sums) / sum(counts))
    assert ddp_average != pytest.approx(sum(s / c for s, c in zip(sums, counts)) / len(sums))


def test_two_processes_equal_one_process_with_their_batches(tiny_model_dir, tmp_path):
    _launch(_worker, (str(tiny_model_dir), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["local_tokens"] != ranks[1]["local_tokens"]  # the case a mean of means gets wrong

    single = SFTTrainer(config(tiny_model_dir, tmp_path / "one", grad_accum=2), uneven_rows())
    want = _run(single)
    for r in ranks:
        assert r["total_steps"] == want["total_steps"]
        assert r["lrs"] == pytest.approx(want["lrs"], rel=1e-9)  # one schedule step per optimizer step
        assert r["losses"] == pytest.approx(want["losses"], rel=1e-5)  # the global token mean
    weights = single.trainable_state()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == weights.keys()
        for name in weights:
            assert torch.allclose(got[name], weights[name], rtol=1e-4, atol=1e-6), name
