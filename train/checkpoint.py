"""Trainer checkpoints, one format for SFT and GRPO: a directory written to a temp name and renamed,
so a kill during a save leaves the previous checkpoint whole.

    <dir>/state.pt    step, trainable weights (``params``), optimizer and scheduler state
    <dir>/rng.pt      Python, NumPy, torch (and CUDA) RNG states, when saved with ``rng=True``
    <dir>/meta.json   whatever else the trainer wants back (metric history, config)

``state.pt`` holds only tensors and plain data, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from agent.errors import DataError

__all__ = ["latest", "load", "prune", "save", "trainable_state"]


def trainable_state(model: Any) -> dict[str, Any]:
    """CPU copies of the weights that train (``requires_grad``)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save(path: Path, step: int, params: dict[str, Any], optimizer: Any, scheduler: Any = None,
         meta: dict[str, Any] | None = None, rng: bool = False) -> Path:
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"step": step, "params": params, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None}, tmp / "state.pt")
    if rng:
        torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps(meta or {}))
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load(path: Path, model: Any, optimizer: Any = None, scheduler: Any = None) -> tuple[int, dict[str, Any]]:
    """Load what ``save`` wrote into ``model`` (and the optimizer, scheduler and RNG states where
    given and saved); returns (step, meta)."""
    import torch

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    unknown = [n for n in state["params"] if n not in params]
    if unknown:
        raise DataError(f"checkpoint {path} does not fit this model ({len(unknown)} unknown weights, e.g. "
                        f"{unknown[0]}); resume with the same model and LoRA settings, or start a fresh run")
    with torch.no_grad():
        for n, value in state["params"].items():
            params[n].copy_(value.to(params[n].device, params[n].dtype))
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if (path / "rng.pt").exists():
        _set_rng_state(torch.load(path / "rng.pt", weights_only=False))  # our own file: Python/NumPy states
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    return int(state["step"]), meta


def latest(root: Path, pattern: str = "step-*") -> Path | None:
    """The last (by name) checkpoint directory under ``root`` that holds a ``state.pt``."""
    found = sorted(Path(root).glob(f"{pattern}/state.pt"))
    return found[-1].parent if found else None


def prune(root: Path, keep: int, pattern: str = "step-*") -> None:
    """Delete all but the last ``keep`` checkpoint directories under ``root``."""
    for old in sorted(Path(root).glob(pattern))[: -keep if keep > 0 else None]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
