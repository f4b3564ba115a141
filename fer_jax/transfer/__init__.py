"""Transfer learning from torchvision ImageNet weights: conversion, loading, fine-tuning controls.

convert: torchvision state dicts -> Flax variables (checked by name and shape);
torch_file: reads torch.save files without PyTorch; finetune: load_pretrained,
the parameter groups of the optimizer, frozen parts and their BatchNorm statistics.
"""
