"""What the model reads: normalisation (numpy and TensorFlow side by side), augmentation, the
tf.data pipelines."""
