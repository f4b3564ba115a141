"""Data parallelism over every device of every host.

One named axis, DATA_AXIS, carries the batch. The step functions write their
collectives over it explicitly, so the same function runs under `jax.pmap` and
under `jax.jit` + `jax.shard_map` over a mesh of all devices (the default).
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

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


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh of every device of every host; Auto axis types for plain data parallelism."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


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
    """The default: jax.jit over jax.shard_map on a mesh of every device of every host.
    State is replicated; each host passes its own rows of the global batch."""

    def __init__(self):
        self.mesh = data_mesh()

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
    jax.pmap over this host's devices, state stacked along a leading device axis."""

    mesh = None

    def compile(self, train_fn: Callable, eval_fn: Callable) -> tuple[Callable, Callable]:
        return (jax.pmap(train_fn, axis_name=DATA_AXIS, in_axes=(0, 0, None), donate_argnums=(0,)),
                jax.pmap(eval_fn, axis_name=DATA_AXIS, in_axes=(0, 0)))

    def to_devices(self, tree: Any) -> Any:
        devices = jax.local_devices()
        stacked = NamedSharding(jax.sharding.Mesh(np.array(devices), ("local",)), P("local"))
        return jax.tree.map(lambda x: jax.device_put(
            np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), stacked), tree)

    def replica(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: x[0], tree)

    def shard(self, batch: dict[str, np.ndarray]) -> dict:
        n = jax.local_device_count()
        return {k: v.reshape((n, -1) + v.shape[1:]) for k, v in batch.items()}


class StepRunner:
    """Wraps per-shard step functions for the chosen parallel mode.

    `train(state, batch, rng)` and `eval(state, batch)` take host-side batches (this
    process's rows) and return replicated results; state lives on the devices in the
    layout the mode needs, converted with `to_devices` / `to_host`.
    """

    def __init__(self, train_fn: Callable, eval_fn: Callable, mode: str = "jit",
                 max_in_flight: int = MAX_STEPS_IN_FLIGHT):
        if mode not in ("jit", "pmap"):
            raise ValueError(f"parallel mode must be 'jit' or 'pmap', got {mode!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.mode = mode
        self.max_in_flight = max_in_flight
        # Outputs of the steps dispatched and maybe unfinished, oldest first.
        self._in_flight: collections.deque = collections.deque()
        self._layout = _MeshLayout() if mode == "jit" else _PmapLayout()
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
