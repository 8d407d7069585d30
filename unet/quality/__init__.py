"""Quality signals per input and their calibration (which masks need a human)."""
