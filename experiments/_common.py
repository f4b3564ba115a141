"""Settings several experiments of the original study share (imported by the experiment files)."""


def original_study_augmentation(c):
    """The original study's v2 augmentation: flips, small rotations and shifts."""
    c.augment.hflip_prob = 0.5
    c.augment.rotation_deg = 10.0
    c.augment.translate_frac = 0.1
    return c


def full_augmentation(c):
    """Every augmentation the original study used (its deep CNN v3)."""
    original_study_augmentation(c)
    c.augment.rotation_deg = 15.0
    c.augment.scale_range = (0.9, 1.1)
    c.augment.shear_deg = 10.0
    c.augment.brightness = 0.2
    c.augment.contrast = 0.2
    c.augment.erasing_prob = 0.1
    return c
