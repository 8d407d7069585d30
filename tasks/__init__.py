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
    # library loggers (data_catalog, unet) log outside flow runs too (the demo's data, the
    # CLI's checks): no "attempted to send logs to the API without a flow run id" warnings.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # oneDNN: 1.2-1.5x faster training on CPUs where TensorFlow leaves it off by default.
    "TF_ENABLE_ONEDNN_OPTS": "1",
}
for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)
