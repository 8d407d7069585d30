"""Datasets for segflow: reading, pairing, label mapping, hashing, splitting, TFRecords.

A plain library: it never imports Prefect, ``tasks``, ``flows`` or ``unet``.
"""
