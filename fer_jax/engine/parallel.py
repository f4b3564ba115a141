"""Data parallelism over every device of every host (in one CPU process: the devices the run asks for).

One named axis, DATA_AXIS, carries the batch. The step functions write their
collectives over it explicitly, so the same function runs under `jax.pmap` and
under `jax.jit` + `jax.shard_map` over a mesh of the run's devices (the default).
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from fer_jax.runtime import cpu_device_count

DATA_AXIS = "data"

# Steps a StepRunner lets run ahead of the host. With the CPU split into devices
# (cpu_devices), every all-reduce is an in-process rendezvous of the devices' threads;
# with a few hundred steps queued on the 2-core machine the participants stopped
# arriving and XLA aborted the process after its 40 s rendezvous timeout (100 train or
# 500 eval steps in flight did; 50 and 200 did not; BUILD_NOTES). Eight keep the queue
# full: no slower than 50 in the same measurement.
MAX_STEPS_IN_FLIGHT = 8


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Starts jax.distributed when flags or the usual environment variables ask for it.

    A single-process run (no flags, no cluster environment) needs nothing.
    """
    explicit = coordinator_address is not None
    from_env = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS"))
    if not (explicit or from_env):
        return
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()


def run_devices(cpu_devices: int = 0) -> list:
    """The devices a run spans: every device of every host; in a single CPU process, the
    first cpu_device_count(CPU_DEVICES) of the process's devices (all, if it has fewer).

    The command splits the CPU into that many devices before JAX starts; a process that
    already has others (a notebook, the test suite's 8) still runs on the count asked for.
    """
    devices = jax.devices()
    if jax.process_count() > 1 or devices[0].platform != "cpu":
        return devices
    return devices[:cpu_device_count(cpu_devices)]


def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh of DEVICES (default: every device of every host); Auto axis types for
    plain data parallelism."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from this host's rows; each host passes only its own shard."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh) -> Any:
    """Places a host pytree (identical on every host) replicated over the mesh."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


class _MeshLayout:
    """The default: jax.jit over jax.shard_map on a mesh of the run's devices.
    State is replicated; each host passes its own rows of the global batch."""

    def __init__(self, devices: list):
        self.mesh = data_mesh(devices)

    def compile(self, train_fn: Callable, eval_fn: Callable) -> tuple[Callable, Callable]:
        # check_vma=False: gradients are averaged by the explicit psum in the step,
        # exactly as under pmap, instead of by shard_map's implicit transposes.
        train = jax.jit(jax.shard_map(train_fn, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS), P()),
                                      out_specs=(P(), P()), check_vma=False), donate_argnums=(0,))
        evaluate = jax.jit(jax.shard_map(eval_fn, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)),
                                         out_specs=P(), check_vma=False))
        return train, evaluate

    def to_devices(self, tree: Any) -> Any:
        return replicate(tree, self.mesh)

    def replica(self, tree: Any) -> Any:
        return tree

    def shard(self, batch: dict[str, np.ndarray]) -> dict:
        return global_batch(batch, self.mesh)


class _PmapLayout:
    """parallel=pmap, an adapter kept for comparison (the step functions are the same):
    jax.pmap over this host's devices of the run, state stacked along a leading device axis."""

    mesh = None

    def __init__(self, devices: list):
        self.local = [d for d in devices if d.process_index == jax.process_index()]
        # pmap's own default (every local device) where the run spans them all: in a
        # multi-process run, pmap's devices must name every process's devices.
        self.pmap_devices = None if self.local == jax.local_devices() else self.local

    def compile(self, train_fn: Callable, eval_fn: Callable) -> tuple[Callable, Callable]:
        return (jax.pmap(train_fn, axis_name=DATA_AXIS, in_axes=(0, 0, None), donate_argnums=(0,),
                         devices=self.pmap_devices),
                jax.pmap(eval_fn, axis_name=DATA_AXIS, in_axes=(0, 0), devices=self.pmap_devices))

    def to_devices(self, tree: Any) -> Any:
        devices = self.local
        stacked = NamedSharding(jax.sharding.Mesh(np.array(devices), ("local",)), P("local"))
        return jax.tree.map(lambda x: jax.device_put(
            np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), stacked), tree)

    def replica(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: x[0], tree)

    def shard(self, batch: dict[str, np.ndarray]) -> dict:
        n = len(self.local)
        return {k: v.reshape((n, -1) + v.shape[1:]) for k, v in batch.items()}


class StepRunner:
    """Wraps per-shard step functions for the chosen parallel mode.

    `train(state, batch, rng)` and `eval(state, batch)` take host-side batches (this
    process's rows) and return replicated results; state lives on the devices in the
    layout the mode needs, converted with `to_devices` / `to_host`.
    """

    def __init__(self, train_fn: Callable, eval_fn: Callable, mode: str = "jit",
                 max_in_flight: int = MAX_STEPS_IN_FLIGHT, devices: list | None = None):
        if mode not in ("jit", "pmap"):
            raise ValueError(f"parallel mode must be 'jit' or 'pmap', got {mode!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.mode = mode
        self.max_in_flight = max_in_flight
        # Outputs of the steps dispatched and maybe unfinished, oldest first.
        self._in_flight: collections.deque = collections.deque()
        # The devices the run spans (default: run_devices(), the auto count on a CPU).
        self.devices = list(run_devices() if devices is None else devices)
        self._layout = (_MeshLayout if mode == "jit" else _PmapLayout)(self.devices)
        self.mesh = self._layout.mesh
        self._train, self._eval = self._layout.compile(train_fn, eval_fn)

    def to_devices(self, state: Any) -> Any:
        return self._layout.to_devices(state)

    def to_host(self, tree: Any) -> Any:
        """Fetches a replicated pytree (state, metrics, eval sums) as numpy."""
        return jax.tree.map(lambda x: np.asarray(jax.device_get(_first_shard(x))),
                            self._layout.replica(tree))

    def _dispatched(self, outputs: Any) -> None:
        """Waits for the oldest dispatched steps until at most max_in_flight are unfinished."""
        self._in_flight.append(outputs)
        while len(self._in_flight) > self.max_in_flight:
            jax.block_until_ready(self._in_flight.popleft())

    @property
    def steps_in_flight(self) -> int:
        """Dispatched steps not yet known to be finished (at most max_in_flight)."""
        return len(self._in_flight)

    def train(self, state, batch, rng):
        state, metrics = self._train(state, self._layout.shard(batch), rng)
        # The metrics, not the state: the state is donated to the next step.
        self._dispatched(metrics)
        return state, metrics

    def eval(self, state, batch):
        out = self._eval(state, self._layout.shard(batch))
        self._dispatched(out)
        return out


def _first_shard(x):
    """A replicated array's value, readable on any host (no cross-host gather)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_shards[0].data
    return x
