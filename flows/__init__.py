"""Prefect flows of segflow and the ``segflow`` command line."""

import tasks  # noqa: F401  (sets Prefect/TensorFlow environment defaults before they load)
