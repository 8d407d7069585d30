"""Training: the trainer, its plan from the data, devices, cross-validation and ensembles."""
