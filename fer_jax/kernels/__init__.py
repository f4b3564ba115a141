"""Convolution kernels: XLA's own, or oneDNN's through the XLA FFI on x86-64 Linux CPUs.

`resolve_kernels(setting)` turns the config's `kernels` (auto, onednn, xla) into the
kernels a model uses (onednn or xla), building and loading the oneDNN library when it
is wanted; `conv_general_dilated_for(kernels)` is what fer_jax.models.layers.conv hands
to flax.linen.Conv. Nothing here builds or loads anything at import.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

from fer_jax.config import KERNEL_SETTINGS
from fer_jax.errors import UserError
from fer_jax.runtime import usable_cores
from fer_jax.kernels.build import KernelsUnavailable, load, platform_supported
from fer_jax.kernels.conv import OnednnConvGeneralDilated

KERNELS = ("onednn", "xla")

__all__ = ["KERNELS", "KERNEL_SETTINGS", "KernelsUnavailable", "conv_general_dilated_for", "decide_kernels",
           "onednn_threads", "resolve_kernels"]


@functools.cache
def _report_once(message: str) -> None:
    """Prints MESSAGE to stderr the first time only: every model built in a run says it."""
    print(message, file=sys.stderr, flush=True)


@functools.cache
def _availability(backend: str) -> tuple[bool, str]:
    """(usable, the reason) for the oneDNN kernels on BACKEND, decided once per process."""
    if backend != "cpu":
        return False, f"the {backend} backend uses XLA's kernels"
    reason = platform_supported()
    if reason:
        return False, reason
    try:
        library = load()
    except KernelsUnavailable as err:
        return False, str(err)
    return True, f"oneDNN {library.onednn_version} on an x86-64 Linux CPU"


def decide_kernels(setting: str, backend: str | None = None) -> tuple[str, str]:
    """(the kernels SETTING means on BACKEND (default: JAX's), "onednn" or "xla", the line
    that says which and why); "onednn" where it cannot be used is a UserError with the
    reason."""
    import jax

    if setting not in KERNEL_SETTINGS:
        raise UserError(f"kernels must be one of {', '.join(KERNEL_SETTINGS)}, got {setting!r}")
    if setting == "xla":
        return "xla", "kernels: XLA convolutions (kernels=xla)"
    usable, why = _availability(backend or jax.default_backend())
    if setting == "onednn":
        if not usable:
            raise UserError(f"kernels=onednn: {why}")
        return "onednn", f"kernels: oneDNN convolutions ({why})"
    if usable:
        return "onednn", f"kernels: oneDNN convolutions (auto: {why})"
    return "xla", f"kernels: XLA convolutions (auto: {why})"


def resolve_kernels(setting: str, backend: str | None = None) -> str:
    """decide_kernels' choice, its line printed to stderr once per process."""
    kernels, message = decide_kernels(setting, backend)
    _report_once(message)
    return kernels


def onednn_threads() -> int:
    """oneDNN's threads per call: the cores of this process shared among the CPU devices
    (each device runs its own convolutions at the same time as the others)."""
    import jax

    return max(1, usable_cores() // max(1, jax.local_device_count("cpu")))


def conv_general_dilated_for(kernels: str) -> Callable | None:
    """The conv_general_dilated flax.linen.Conv gets for KERNELS (None: lax's own)."""
    if kernels == "xla":
        return None
    if kernels == "onednn":
        return OnednnConvGeneralDilated(threads=onednn_threads())
    raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
