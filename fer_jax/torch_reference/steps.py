"""Train and eval images/s of the PyTorch copies (fer_jax.torch_reference.models) on the CPU.

PyTorch is given its best plain settings: channels_last tensors and weights, fused
AdamW where the build has it, and both float32 and bfloat16 autocast, so that the
faster of the two can be reported. A train step is forward, cross-entropy, backward
and AdamW's step on one synthetic, already normalized batch; an eval step is the
forward pass with the summed loss and the predictions, under inference_mode.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from fer_jax.data.types import IMAGE_SIZE, NUM_CLASSES
from fer_jax.timing import measure_images_per_s
from fer_jax.torch_reference.models import build_torch_model

Step = Callable[[], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TorchSetting:
    """How PyTorch runs: bfloat16 autocast or float32, channels_last or NCHW."""

    bf16: bool = False
    channels_last: bool = True

    @property
    def label(self) -> str:
        return ("bf16" if self.bf16 else "fp32") + ("" if self.channels_last else " nchw")


# What the benchmark tries; the faster is reported.
BEST_SETTINGS: tuple[TorchSetting, ...] = (TorchSetting(bf16=False), TorchSetting(bf16=True))


def set_threads(threads: int) -> None:
    """PyTorch's intra-op threads (the process-wide setting PyTorch has)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def make_adamw(params, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this build has one for the CPU, else foreach."""
    try:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, foreach=True)


def synthetic_batch(batch_size: int, setting: TorchSetting, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal images (B, 1, 48, 48) (already "normalized") and random labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    if setting.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def _autocast(setting: TorchSetting) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting.bf16)


def _model(name: str, setting: TorchSetting, seed: int,
           model_kwargs: Mapping[str, Any] | None) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_torch_model(name, model_kwargs=model_kwargs)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_train_step(name: str, batch_size: int, setting: TorchSetting, *,
                    learning_rate: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                    model_kwargs: Mapping[str, Any] | None = None) -> Step:
    """One training step of model NAME (with MODEL_KWARGS) per call; returns the (detached) loss."""
    model = _model(name, setting, seed, model_kwargs).train()
    optimizer = make_adamw(model.parameters(), learning_rate, weight_decay)
    images, labels = synthetic_batch(batch_size, setting, seed)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(setting):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def make_eval_step(name: str, batch_size: int, setting: TorchSetting, *, seed: int = 0,
                   model_kwargs: Mapping[str, Any] | None = None) -> Step:
    """One evaluation forward pass of model NAME (with MODEL_KWARGS) per call; returns
    [summed loss, correct] (fer_jax's eval step likewise sums the loss and scores the
    predictions)."""
    model = _model(name, setting, seed, model_kwargs).eval()
    images, labels = synthetic_batch(batch_size, setting, seed)

    def step() -> torch.Tensor:
        with torch.inference_mode(), _autocast(setting):
            logits = model(images).float()
            loss = F.cross_entropy(logits, labels, reduction="sum")
            correct = (logits.argmax(dim=1) == labels).sum()
        return torch.stack([loss, correct.float()])

    return step


def images_per_s(step: Step, batch_size: int, seconds: float, *, warmup_steps: int = 2) -> float:
    """Steady-state images/s of STEP (PyTorch on the CPU returns when the work is done)."""
    return measure_images_per_s(step, batch_size, seconds, warmup_steps=warmup_steps)


def train_images_per_s(name: str, batch_size: int, *, threads: int, seconds: float,
                       setting: TorchSetting = TorchSetting()) -> float:
    """Training images/s of model NAME at BATCH_SIZE on THREADS threads."""
    set_threads(threads)
    return images_per_s(make_train_step(name, batch_size, setting), batch_size, seconds)


def eval_images_per_s(name: str, batch_size: int, *, threads: int, seconds: float,
                      setting: TorchSetting = TorchSetting()) -> float:
    """Evaluation images/s of model NAME at BATCH_SIZE on THREADS threads."""
    set_threads(threads)
    return images_per_s(make_eval_step(name, batch_size, setting), batch_size, seconds)


def best_of(rates: dict[TorchSetting, list[float]]) -> tuple[TorchSetting, float]:
    """The setting with the highest median rate, and that median."""
    medians = {setting: statistics.median(values) for setting, values in rates.items()}
    best = max(medians, key=medians.get)
    return best, medians[best]


def best_images_per_s(kind: str, name: str, batch_size: int, *, threads: int, seconds: float,
                      rounds: int = 3) -> tuple[TorchSetting, float]:
    """The faster of BEST_SETTINGS for KIND ("train" or "eval"): median over ROUNDS,
    the settings taking turns within each round."""
    makers = {"train": make_train_step, "eval": make_eval_step}
    if kind not in makers:
        raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}")
    set_threads(threads)
    steps = {s: makers[kind](name, batch_size, s) for s in BEST_SETTINGS}
    rates: dict[TorchSetting, list[float]] = {s: [] for s in BEST_SETTINGS}
    for _ in range(rounds):
        for setting, step in steps.items():
            rates[setting].append(images_per_s(step, batch_size, seconds))
    return best_of(rates)
