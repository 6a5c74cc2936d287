"""Training: tool-use data synthesis, knowledge probe, SFT (LoRA/full), GRPO, reward models, export.

Importing ``train`` needs neither torch nor the tools; each module imports its heavy dependencies
when used. Data -> ``train.data`` / ``train.probe``; rendering and masks -> ``train.render``;
fine-tuning -> ``train.sft``; merge and GGUF -> ``train.export``; the CLI -> ``train.cli``.
"""

__all__: list[str] = []  # import the submodules themselves: train.sft, train.data, ...
