"""Where XLA:CPU spends a train step: the probes behind BUILD_NOTES' "Where the training time goes".

    python benchmarks/xla_cpu_probe.py convs        # GFLOP/s of each cbam_cnn conv: forward, input and weight gradient
    python benchmarks/xla_cpu_probe.py reductions   # a BatchNorm-style sum over (N, H, W), three ways
    python benchmarks/xla_cpu_probe.py weight-grad  # the conv weight gradient by hand against XLA's own
    python benchmarks/xla_cpu_probe.py first-block  # the recipes' first block (3x3, 1->32, 48x48) by batch size
    python benchmarks/xla_cpu_probe.py microbatch [M [unroll]]  # fast_15min's step, each device's share in scanned microbatches of M
    python benchmarks/xla_cpu_probe.py profile [MODEL|EXPERIMENT]  # a train step's time per XLA op kind (needs TensorFlow; PROFILE_TOP=N kinds, default 15)
    python benchmarks/xla_cpu_probe.py pool [MODEL ...]  # max_pool2's own gradient against a reshape-and-max's automatic one
    python benchmarks/xla_cpu_probe.py bn [MODEL ...]    # BatchNorm with its own gradient (benchmarks/bn_own_gradient.py) against nn.BatchNorm's automatic one (BN_DTYPES=float32,bfloat16; BN_ROUNDS=5)

Each runs on however many CPU devices XLA_FLAGS gives (one by default) and takes the
XLA_FLAGS it is started with, so that backends can be compared in separate processes,
e.g. XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (YNNPACK off). Times are medians.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import os
import re
import sys
import tempfile
import time
from unittest import mock

# The profile needs XLA's per-op trace events, which only exist when asked for at start-up.
if sys.argv[1:2] == ["profile"]:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BATCH = 64
# cbam_cnn's 3x3 convolutions: (height = width, input channels, output channels).
CBAM_CONVS = ((48, 32, 32), (24, 32, 64), (24, 64, 64), (12, 64, 128), (12, 128, 128))


def _in_turn(names, rounds: int):
    """NAMES over ROUNDS rounds, the order reversed every other round (A, B, B, A, ...), so
    that neither side always runs first under a drifting load."""
    names = list(names)
    for r in range(rounds):
        yield from (names if r % 2 == 0 else names[::-1])


def _interleaved_ms(fns: dict, rounds: int, *args) -> dict[str, float]:
    """Each of FNS's median milliseconds per call on ARGS (median_ms, 5 calls a round),
    the medians of ROUNDS interleaved rounds."""
    times = {name: [] for name in fns}
    for name in _in_turn(fns, rounds):
        times[name].append(median_ms(fns[name], *args, repeats=5))
    return {name: float(np.median(t)) for name, t in times.items()}


def median_ms(fn, *args, repeats: int = 10) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _layer(size: int, cin: int, cout: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(BATCH, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(BATCH, size, size, cout)), jnp.float32)
    return x, w, dy


def _uses_ynnpack(compiled_text: str) -> str:
    return "YNNPACK" if "__ynn_fusion" in compiled_text else "XLA/Eigen"


def probe_convs() -> None:
    for size, cin, cout in CBAM_CONVS:
        x, w, dy = _layer(size, cin, cout)
        forward = jax.jit(conv)
        input_grad = jax.jit(lambda dy, x=x, w=w: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
        weight_grad = jax.jit(lambda dy, x=x, w=w: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        gflop = 2 * BATCH * size * size * cin * cout * 9 / 1e9
        rates = [gflop / median_ms(f, a) * 1e3 for f, a in ((lambda x: forward(x, w), x), (input_grad, dy),
                                                            (weight_grad, dy))]
        backend = _uses_ynnpack(weight_grad.lower(dy).compile().as_text())
        print(f"{size}x{size} {cin}->{cout}: forward {rates[0]:4.0f}  input grad {rates[1]:4.0f}  "
              f"weight grad {rates[2]:4.0f} GFLOP/s  ({backend})", flush=True)


def probe_reductions() -> None:
    for shape in ((BATCH, 48, 48, 32), (BATCH, 24, 24, 64), (BATCH, 12, 12, 128)):
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
        channels = shape[-1]
        exact = np.sum(np.asarray(x, np.float64), (0, 1, 2))
        ways = {"jnp.sum": jax.jit(lambda x: jnp.sum(x, (0, 1, 2))),
                "ones @ x": jax.jit(lambda x: jnp.ones((x.size // channels,), x.dtype) @ x.reshape(-1, channels)),
                "two-level sum": jax.jit(lambda x: jnp.sum(x.reshape(-1, 256, channels), 1).sum(0))}
        cells = []
        for name, fn in ways.items():
            error = float(np.max(np.abs(np.asarray(fn(x), np.float64) - exact)))
            cells.append(f"{name} {median_ms(fn, x, repeats=20):5.2f} ms (max error {error:.0e})")
        backend = _uses_ynnpack(ways["jnp.sum"].lower(x).compile().as_text())
        print(f"{shape}: " + "  ".join(cells) + f"  [jnp.sum on {backend}]", flush=True)


def _weight_grad_shifted_dots(x, dy):
    """One (N*H*W, Cin)^T (N*H*W, Cout) product per kernel offset."""
    size, channels = x.shape[1], x.shape[-1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    flat_dy = dy.reshape(-1, dy.shape[-1])
    return jnp.stack([jnp.stack([padded[:, i:i + size, j:j + size, :].reshape(-1, channels).T @ flat_dy
                                 for j in range(3)]) for i in range(3)])


def _weight_grad_patches(x, dy):
    """The nine shifted copies side by side (im2col), then one product."""
    size, channels = x.shape[1], x.shape[-1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + size, j:j + size, :] for i in range(3) for j in range(3)], -1)
    return jnp.einsum("nhwc,nhwd->cd", patches, dy).reshape(3, 3, channels, dy.shape[-1])


def probe_weight_grad() -> None:
    for size, cin, cout in CBAM_CONVS:
        x, w, dy = _layer(size, cin, cout)
        xla = jax.jit(lambda x, dy, w=w: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        reference = np.asarray(xla(x, dy))
        cells = [f"XLA {median_ms(xla, x, dy):6.2f} ms"]
        for name, fn in (("shifted dots", _weight_grad_shifted_dots), ("patches", _weight_grad_patches)):
            jitted = jax.jit(fn)
            error = np.max(np.abs(np.asarray(jitted(x, dy)) - reference)) / np.max(np.abs(reference))
            cells.append(f"{name} {median_ms(jitted, x, dy):6.2f} ms (relative error {error:.0e})")
        print(f"{size}x{size} {cin}->{cout}: " + "  ".join(cells), flush=True)


def _relu_pool(y):
    """The models' ReLU then 2x2 max-pool."""
    from fer_jax.models.layers import max_pool2

    return max_pool2(jax.nn.relu(y))


def _first_conv_patches(x, w):
    """A one-channel 3x3 conv as nine shifted copies side by side and one product."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    size = x.shape[1]
    patches = jnp.concatenate([padded[:, i:i + size, j:j + size, :] for i in range(3) for j in range(3)], -1)
    return patches @ w.reshape(-1, w.shape[-1])


def probe_first_block() -> None:
    """The fast recipes' first block: how its ReLU + pool gradient grows with the batch
    (one device's share), and its conv by XLA or as patches + one product."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 32)) * 0.3, jnp.float32)
    for batch in (16, 32, 48, 64):
        x = jnp.asarray(rng.normal(size=(batch, 48, 48, 1)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(batch, 48, 48, 32)), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(batch, 24, 24, 32)), jnp.float32)
        pool_grad = jax.jit(lambda y, dy: jax.vjp(_relu_pool, y)[1](dy)[0])
        cells = [f"ReLU+pool gradient {median_ms(pool_grad, y, dy, repeats=20):6.2f} ms"]
        for name, fn in (("XLA conv", conv), ("patches", _first_conv_patches)):
            block_grad = jax.jit(lambda w, x, dy, fn=fn: jax.vjp(lambda w: _relu_pool(fn(x, w)), w)[1](dy)[0])
            cells.append(f"{name} block weight gradient {median_ms(block_grad, w, x, dy, repeats=20):6.2f} ms")
        print(f"batch {batch}: " + "  ".join(cells), flush=True)


def probe_microbatch(micro: int, unroll: bool, batch: int = 64) -> None:
    """fast_15min's network: one AdamW step over BATCH images shared by the devices, each
    device running its share as microbatches of MICRO in a lax.scan (gradients summed;
    UNROLL: the scan unrolled) or, when MICRO is at least its share, in one piece."""
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from fer_jax.benchmarking.steps import bench_targets
    from fer_jax.models import get_model

    (target,) = bench_targets([], ["fast_15min"])
    model = get_model(target.model, **target.model_kwargs)
    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    tx = optax.adamw(1e-3, weight_decay=1e-4)

    def loss(params, x, y):
        logits = model.apply({"params": params}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

    def share_grads(params, x, y):
        if micro >= x.shape[0]:
            return jax.grad(loss)(params, x, y)

        def body(total, xy):
            return jax.tree.map(jnp.add, total, jax.grad(loss)(params, *xy)), None

        pieces = (x.reshape(-1, micro, *x.shape[1:]), y.reshape(-1, micro))
        return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), pieces, unroll=unroll)[0]

    def step(params, opt_state, x, y):
        grads = jax.shard_map(
            lambda p, x, y: jax.tree.map(lambda g: jax.lax.psum(g, "data") / batch, share_grads(p, x, y)),
            mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    step = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)["params"],
                            replicated)
    opt_state = jax.device_put(tx.init(params), replicated)
    x = jax.device_put(rng.normal(size=(batch, 48, 48, 1)).astype(np.float32), split)
    y = jax.device_put(rng.integers(0, 7, batch).astype(np.int32), split)
    state = step(params, opt_state, x, y)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(3):
            state = step(*state, x, y)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - start) / 3)
    share = batch // devices
    pieces = (f"microbatches of {micro}{' (unrolled)' if unroll else ''}" if micro < share
              else "one piece")
    print(f"{devices} device(s), {share} images each in {pieces}: "
          f"{batch / float(np.median(times)):.0f} img/s", flush=True)


def _autodiff_max_pool2(x):
    """max_pool2 as a reshape and a max, differentiated by JAX (ties share the gradient)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def probe_pool(models: list[str], rounds: int = 5, steps: int = 3) -> None:
    """The ReLU + 2x2 max-pool gradient alone, then whole train steps of MODELS (the bench's
    steps, default kernels), with fer_jax's max_pool2 and with _autodiff_max_pool2 in turn."""
    from fer_jax.benchmarking.steps import prepare_jax_steps
    from fer_jax.models import cbam, deep_cnn, resnet, simple_cnn, vgg
    from fer_jax.models.layers import max_pool2

    pools = {"max_pool2": max_pool2, "autodiff": _autodiff_max_pool2}
    rng = np.random.default_rng(0)
    for shape in ((BATCH, 48, 48, 32), (BATCH, 24, 24, 64), (BATCH, 12, 12, 128)):
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        dy = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)
        grads = {name: jax.jit(lambda x, dy, p=p: jax.vjp(lambda x: p(jax.nn.relu(x)), x)[1](dy)[0])
                 for name, p in pools.items()}
        print(f"{shape} ReLU+pool gradient: " + "  ".join(
            f"{name} {ms:.2f} ms" for name, ms in _interleaved_ms(grads, rounds, x, dy).items()), flush=True)
    for model in models:
        prepared = {}
        for name, pool in pools.items():
            with contextlib.ExitStack() as stack:
                for module in (cbam, deep_cnn, resnet, simple_cnn, vgg):
                    stack.enter_context(mock.patch.object(module, "max_pool2", pool))
                prepared[name] = prepare_jax_steps(model, BATCH).train_step  # compiled here
        rates = _interleaved_rates(prepared, rounds, steps)
        print(f"{model} train img/s on {jax.device_count()} device(s): " + "  ".join(
            f"{name} {rate:.0f}" for name, rate in rates.items())
            + f"  ratio {rates['max_pool2'] / rates['autodiff']:.2f}", flush=True)


def _interleaved_times(prepared: dict, rounds: int, steps: int) -> dict[str, np.ndarray]:
    """(wall seconds, process CPU seconds) per call of each prepared step in each round,
    shape (rounds, 2); the rounds alternate the order (A, B, B, A, ...); each round: one
    untimed call, then STEPS timed. CPU time counts this process's threads only, so other
    jobs on a shared machine move it less than wall time."""
    times = {name: [] for name in prepared}
    for name in _in_turn(prepared, rounds):
        jax.block_until_ready(prepared[name]())
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            jax.block_until_ready(prepared[name]())
        times[name].append(((time.perf_counter() - start) / steps,
                            (time.process_time() - cpu_start) / steps))
    return {name: np.asarray(t) for name, t in times.items()}


def _interleaved_rates(prepared: dict, rounds: int, steps: int) -> dict[str, float]:
    """Images per second (wall time) of each prepared step: medians of _interleaved_times."""
    return {name: BATCH / float(np.median(t[:, 0]))
            for name, t in _interleaved_times(prepared, rounds, steps).items()}


def _bn_alone(classes: dict, dtypes: list[str], rounds: int) -> None:
    """Training-mode BatchNorm's forward and gradient alone, each of CLASSES, at cbam_cnn's shapes."""
    from fer_jax.models import layers

    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for shape in ((BATCH, 48, 48, 32), (BATCH, 24, 24, 64), (BATCH, 12, 12, 128)):
            x = jnp.asarray(rng.normal(size=shape), dtype)
            dy = jnp.asarray(rng.normal(size=shape), dtype)
            grads = {}
            for name, cls in classes.items():
                bn = cls(use_running_average=False, momentum=layers.BN_MOMENTUM,
                         epsilon=layers.BN_EPSILON, dtype=dtype)
                variables = bn.init(jax.random.key(0), x)

                def forward(x, params, bn=bn, stats=variables["batch_stats"]):
                    return bn.apply({"params": params, "batch_stats": stats}, x,
                                    mutable=["batch_stats"])[0]

                grads[name] = jax.jit(lambda x, dy, p=variables["params"], f=forward:
                                      jax.vjp(f, x, p)[1](dy))
            print(f"{dtype} {shape} BatchNorm forward+gradient: " + "  ".join(
                f"{name} {ms:.2f} ms" for name, ms in _interleaved_ms(grads, rounds, x, dy).items()),
                flush=True)


def probe_bn(models: list[str], rounds: int, steps: int = 3) -> None:
    """BatchNorm alone (_bn_alone), then whole train steps of MODELS (the bench's steps,
    default kernels) in each of BN_DTYPES, with benchmarks/bn_own_gradient.py's BatchNorm
    patched in and with the models' own nn.BatchNorm, interleaved."""
    import flax.linen as nn

    import bn_own_gradient  # beside this script

    from fer_jax.benchmarking.steps import prepare_jax_steps
    from fer_jax.models import cbam, deep_cnn, layers, resnet, simple_cnn, vgg_imagenet

    dtypes = os.environ.get("BN_DTYPES", "float32,bfloat16").split(",")
    _bn_alone({"own gradient": bn_own_gradient.BatchNorm, "nn.BatchNorm": nn.BatchNorm},
              dtypes, rounds)
    for model in models:
        for dtype in dtypes:
            prepared = {}
            with contextlib.ExitStack() as stack:
                for module in (cbam, deep_cnn, layers, resnet, simple_cnn, vgg_imagenet):
                    stack.enter_context(mock.patch.object(module, "batch_norm",
                                                          bn_own_gradient.batch_norm))
                prepared["own gradient"] = prepare_jax_steps(model, BATCH, dtype).train_step
            prepared["nn.BatchNorm"] = prepare_jax_steps(model, BATCH, dtype).train_step
            times = _interleaved_times(prepared, rounds, steps)
            rates = {name: BATCH / float(np.median(t[:, 0])) for name, t in times.items()}
            # Each round's own ratio: both steps timed back to back, under the same load.
            per_round = times["nn.BatchNorm"] / times["own gradient"]
            wall, cpu = per_round[:, 0], per_round[:, 1]
            cpu_ms = {name: 1e3 * float(np.median(t[:, 1])) for name, t in times.items()}
            print(f"{model} {dtype} train img/s on {jax.device_count()} device(s): " + "  ".join(
                f"{name} {rate:.1f}" for name, rate in rates.items())
                + f"  ratio {rates['own gradient'] / rates['nn.BatchNorm']:.3f}"
                f" (rounds' wall ratios: median {np.median(wall):.3f}, {wall.min():.3f}-{wall.max():.3f});"
                " CPU ms per step: " + "  ".join(f"{name} {ms:.0f}" for name, ms in cpu_ms.items())
                + f"  rounds' CPU ratios: median {np.median(cpu):.3f}, {cpu.min():.3f}-{cpu.max():.3f}",
                flush=True)


def probe_profile(what: str, steps: int = 10) -> None:
    """WHAT: a registry model, or an experiment (the network it trains)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from fer_jax.benchmarking.steps import bench_targets, prepare_jax_steps
    from fer_jax.config import experiment_names

    (target,) = bench_targets([], [what]) if what in experiment_names() else bench_targets([what], [])
    model = target.label
    jax_steps = prepare_jax_steps(target.model, BATCH, model_kwargs=target.model_kwargs)
    for _ in range(3):
        jax.block_until_ready(jax_steps.train_step())
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(jax_steps.train_step())
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            jax.block_until_ready(jax_steps.train_step())
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    per_kind: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # the threads that run XLA's ops
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name.startswith(("ThunkExecutor", "end: ")):
                    continue
                kind = re.sub(r"\.\d+$", "", name)
                per_kind[kind] += event.duration_ps / 1e9 / steps
                calls[kind] += 1 / steps
    print(f"{model}: {wall_ms:.1f} ms per train step of {BATCH} ({BATCH / wall_ms * 1e3:.0f} img/s) "
          f"on {jax.device_count()} device(s); op time summed over XLA's threads: "
          f"{sum(per_kind.values()):.1f} ms (convolutions that Eigen runs on its own threads are "
          "undercounted)")
    for kind, ms in per_kind.most_common(int(os.environ.get("PROFILE_TOP", "15"))):
        print(f"{ms:8.2f} ms  {calls[kind]:6.1f} calls  {kind}")


if __name__ == "__main__":
    probes = {"convs": probe_convs, "reductions": probe_reductions, "weight-grad": probe_weight_grad,
              "first-block": probe_first_block,
              "microbatch": lambda: probe_microbatch(int(sys.argv[2]) if len(sys.argv) > 2 else 64,
                                                     sys.argv[3:4] == ["unroll"]),
              "pool": lambda: probe_pool(sys.argv[2:] or ["simple_cnn_v1", "cbam_cnn"]),
              "bn": lambda: probe_bn(sys.argv[2:] or ["cbam_cnn", "deep_cnn_v1", "simple_cnn_v2"],
                                     int(os.environ.get("BN_ROUNDS", "5"))),
              "profile": lambda: probe_profile(sys.argv[2] if len(sys.argv) > 2 else "cbam_cnn")}
    if len(sys.argv) < 2 or sys.argv[1] not in probes:
        sys.exit(f"usage: python benchmarks/xla_cpu_probe.py {{{'|'.join(probes)}}} [MODEL]")
    probes[sys.argv[1]]()
