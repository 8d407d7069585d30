"""The U-Net: model, losses, metrics, training, evaluation and inference.

Plain TensorFlow/Keras: it never imports Prefect, ``tasks`` or ``flows``.
"""
