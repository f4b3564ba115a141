"""Validation accuracy of the simple CNN (v1, or v2 with BatchNorm) after its first 300
AdamW steps in PyTorch: batch 64, no augmentation, Training -> PublicTest.

Is simple_cnn_v2's slow start this project's or the recipe's? The same network and
initialisation in the other framework answer it (docs/results/study_full.md). The JAX side
is `python -m fer_jax.train --experiment=simple_cnn_v2 --set max_train_steps=300` with the
augmentation turned off (the command in study_full.md).

    python benchmarks/simple_cnn_v2_start.py FER2013_FILE v2 [SEED] [--torch-init]

--torch-init keeps PyTorch's default initialisation instead of the Flax one that
fer_jax.torch_reference copies.
"""
import sys

import torch
import torch.nn.functional as F

from fer_jax.data.normalization import normalize_images
from fer_jax.data.pipeline import normalization_stats
from fer_jax.data.readers import read_fer
from fer_jax.torch_reference.models import SimpleCNN

STEPS, BATCH = 300, 64
# The experiment files' rates and decays (experiments/simple_cnn_v1.py, simple_cnn_v2.py).
RECIPES = {"v1": dict(batch_norm=False, lr=1e-3, weight_decay=0.0),
           "v2": dict(batch_norm=True, lr=5e-4, weight_decay=1e-4)}


def main(path: str, version: str, seed: int, torch_init: bool) -> float:
    recipe = RECIPES[version]
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = read_fer(path)
    train, valid = data.usage == "Training", data.usage == "PublicTest"
    # The trainer's own input scale: its statistics of Training, its formula (NHWC -> NCHW).
    pixels = normalize_images(data.images, normalization_stats(data.images[train]))[:, None, :, :, 0]
    x_train, y_train = torch.tensor(pixels[train]), torch.tensor(data.labels[train]).long()
    x_valid, y_valid = torch.tensor(pixels[valid]), torch.tensor(data.labels[valid]).long()
    model = SimpleCNN(batch_norm=recipe["batch_norm"])
    if torch_init:
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    model.train()
    for step in range(STEPS):
        rows = order[step * BATCH:(step + 1) * BATCH]
        loss = F.cross_entropy(model(x_train[rows]), y_train[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        right = sum((model(x_valid[i:i + 512]).argmax(1) == y_valid[i:i + 512]).sum().item()
                    for i in range(0, len(x_valid), 512))
    return right / len(x_valid)


if __name__ == "__main__":
    torch_init = "--torch-init" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--torch-init"]
    if len(args) not in (2, 3) or args[1] not in RECIPES:
        sys.exit(__doc__)
    seed = int(args[2]) if len(args) > 2 else 0
    accuracy = main(args[0], args[1], seed, torch_init)
    print(f"{args[1]} seed {seed}{' torch init' if torch_init else ''}: "
          f"PublicTest accuracy after {STEPS} steps {accuracy:.4f}")
