"""simple_cnn_v3: the original study's third recipe, on its second network (model simple_cnn_v2).

v3 names the original study's third simple-CNN experiment, not a third network: the v2
network (BatchNorm) trained with the class-weighted loss AND balanced sampling together.

Redoes the original study's simple CNN v3, the combination that collapsed: the original
study's run fell to 1.76% validation accuracy, predicting only "disgust". Both
corrections at once weight the rare class twice (it is oversampled and its loss is
scaled up), so its effective weight is about 16.5^2 times that of "happy". Kept as it
was, to make that visible.
"""
from fer_jax.experiments._common import original_study_augmentation
from fer_jax.config import base_config


def get_config():
    c = original_study_augmentation(base_config())
    c.description = ("simple_cnn_v2 network, weighted loss + balanced sampling "
                     "(original study: collapsed to 1.76%, only 'disgust')")
    c.model = "simple_cnn_v2"
    c.learning_rate = 5e-4
    c.weight_decay = 1e-4
    c.class_weighted_loss = True
    c.balanced_sampling = True
    c.early_stopping_patience = 7
    return c
