"""GRPO with TRL's trainer and splice's tool rollouts: python calls run in splice's sandbox inside the
model's token stream; TRL trains on exactly the sampled ids, tool output masked (docs/trl.md).

One process (the policy samples its own rollouts; CPU or one GPU):

    python examples/trl_grpo.py --model path/to/hf-model --out runs/trl-grpo

Several GPUs: TRL's vLLM server on one GPU, training on the others; rollouts reach vLLM through
splice's openai backend (token-id prompts, sampled ids and log-probs from the server):

    CUDA_VISIBLE_DEVICES=7 trl vllm-serve --model path/to/hf-model &
    CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6 accelerate launch --num_processes 7 \\
        examples/trl_grpo.py --model path/to/hf-model --vllm-server http://localhost:8000

``--model`` takes a HF model dir, a .gguf file, or 'default' (the embedded SmolLM2, dequantised once).
Needs ``pip install 'splice[torch,trl]'``.
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description="GRPO with TRL and splice tool rollouts")
    p.add_argument("--model", default="default", help="HF model dir, .gguf file, or 'default'")
    p.add_argument("--out", default="runs/trl-grpo", help="TRL output dir")
    p.add_argument("--tasks", default="arith", help="task families (agent.evals.tasks) or a dataset file")
    p.add_argument("--n-tasks", type=int, default=256, help="tasks generated")
    p.add_argument("--steps", type=int, default=20, help="optimisation steps")
    p.add_argument("--batch", type=int, default=8, help="completions per device per step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (num_generations)")
    p.add_argument("--max-tokens", type=int, default=256, help="model tokens per episode")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate")
    p.add_argument("--vllm-server", default="", help="TRL vLLM server URL (`trl vllm-serve`); empty: the "
                   "policy samples its own rollouts")
    a = p.parse_args()

    import datasets
    import torch
    import trl

    from agent.backends import resolve_model
    from agent.backends.transformers import gguf_to_hf_dir
    from agent.runtime import RuntimeConfig
    from train.grpo import GRPOConfig as OwnConfig
    from train.grpo import load_tasks
    from train.trl import SpliceRollout, trl_reward

    path = resolve_model(a.model)
    model = str(gguf_to_hf_dir(path) if path.suffix == ".gguf" else path)
    tasks = load_tasks(OwnConfig(tasks=a.tasks, n_tasks=a.n_tasks))
    data = datasets.Dataset.from_dict({"prompt": [q for q, _ in tasks], "answer": [g for _, g in tasks]})
    vllm = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": a.vllm_server} if a.vllm_server else {}
    args = trl.GRPOConfig(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch,
                          num_generations=a.group, max_completion_length=a.max_tokens, learning_rate=a.lr,
                          temperature=1.0, logging_steps=1, report_to="none", reward_weights=[1.0, 0.2],
                          bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), **vllm)
    with SpliceRollout(tools=["python"], config=RuntimeConfig(max_tool_calls=3)) as rollout:
        trainer = trl.GRPOTrainer(model=model, args=args, train_dataset=data, rollout_func=rollout,
                                  reward_funcs=[trl_reward("accuracy"), trl_reward("format")])
        trainer.train()
        trainer.save_model(a.out)


if __name__ == "__main__":
    main()
