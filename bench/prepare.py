"""Benchmark of the prepare stage on LGG brain MRI (../shared/datasets/lgg-brain-mri).

Prints, measured in one run:
  (a) images/s for index + validate + TFRecords on a cold run;
  (b) the time of a second run over unchanged data (cached) as a fraction of the first.
Runs the library functions the prepare flow runs (no Prefect server), in a temporary folder.

    .venv/bin/python bench/prepare.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet TensorFlow)
from data_catalog.config import PrepareConfig  # noqa: E402
from data_catalog.labels import LabelRule  # noqa: E402
from data_catalog.manifest import index_dataset  # noqa: E402
from data_catalog.splits import split_cases  # noqa: E402
from data_catalog.tfrecords import is_complete, tfrecord_address, write_tfrecords  # noqa: E402


def prepare_once(config: PrepareConfig, out: Path) -> tuple[float, int, bool]:
    """index + validate + split + TFRecords (skipped when the content-addressed set exists)."""
    from data_catalog.hashing import hash_json

    started = time.perf_counter()
    result = index_dataset(config, cache_path=out / "index-cache.csv")
    splits = split_cases(result.manifest, config.val_fraction, config.test_fraction, config.seed)
    rule = LabelRule.build(config.foreground, config.labels, config.label_names)
    address = tfrecord_address(
        result.dataset_hash, hash_json(splits), rule, config.channels, config.num_shards
    )
    target = out / "tfrecords" / address[:16]
    cached = is_complete(target, address)
    if not cached:
        write_tfrecords(
            result.manifest,
            splits,
            target,
            rule,
            config.channels,
            result.dataset_hash,
            config.num_shards,
            address=address,
        )
    return time.perf_counter() - started, len(result.manifest), cached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/lgg-brain-mri"))
    parser.add_argument("--repeat", type=int, default=3, help="cold/warm pairs; best is printed")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: LGG dataset not found at {data}")
        return 0
    config = PrepareConfig(images=str(data), mask_suffix="_mask", group_by="parent", channels=3)
    cold_times, warm_times = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cold, count, cached = prepare_once(config, Path(tmp))
            assert not cached
            warm, _, cached = prepare_once(config, Path(tmp))
            assert cached, "second run was not served from the cache"
        cold_times.append(cold)
        warm_times.append(warm)
    cold, warm = min(cold_times), min(warm_times)
    print(f"LGG: {count} cases (image + mask each), best of {args.repeat}")
    print(
        f"(a) cold prepare (index + validate + TFRecords): {cold:.2f} s = "
        f"{count / cold:.1f} cases/s ({2 * count / cold:.1f} files/s)"
    )
    print(
        f"(b) cached prepare of unchanged data: {warm:.3f} s = {warm / cold:.3f} of the cold "
        f"run (target <= 0.10)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
