"""Inference: the Segmenter (one entry point: batches, sliding window, TTA), post-processing,
precision choice and check, export."""
