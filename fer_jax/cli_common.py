"""Moved to fer_jax.runtime (kept while other modules switch their import)."""
from fer_jax.runtime import CPU_DEVICE_FLAG, auto_cpu_devices, quiet_tensorflow, split_cpu_into_devices, usable_cores

__all__ = ["CPU_DEVICE_FLAG", "auto_cpu_devices", "quiet_tensorflow", "split_cpu_into_devices", "usable_cores"]
