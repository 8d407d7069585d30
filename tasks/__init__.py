"""Thin Prefect tasks over ``unet`` and ``data_catalog``: logging, artifacts, paths in and out.

Importing this package sets quiet, offline defaults for Prefect and TensorFlow (each only when
the variable is not already set), before either library is imported.
"""

import os

_DEFAULTS = {
    # Prefect's ephemeral server takes 10-22 s to start on 2 cores; the default limit is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # oneDNN: 1.2-1.5x faster training on CPUs where TensorFlow leaves it off by default.
    "TF_ENABLE_ONEDNN_OPTS": "1",
}
for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)
