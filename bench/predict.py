"""Benchmark of bulk prediction on the ISBI images copied to many files.

Prints, each as a ratio measured in this run:
  (a) images/s of segflow's folder prediction against a per-image loop written the way the seed
      project's predict does it (PIL open, letterbox resize, model.predict of one image, resize
      back, save) — target >= 3x;
  (b) end-to-end images/s against the model's own forward pass on tensors already in memory —
      target >= 0.9 (issue 24); (b') where the difference goes: one batch end to end (the start: the
      model read, its inference copy, the graph traced; the report and review page), its
      parts, and the images/s of the files after it (the steady rate) against the forward pass;
  (c) peak memory (max RSS of a child process) segmenting 30 against --many images — target <= 1.2;
  (d) the model's effective GFLOP/s during the run (forward FLOPs per image x images/s end to
      end, and of the forward pass alone) against the machine's best matrix product measured in
      the same run (:func:`best_matmul`) — targets >= 0.45 and >= 0.5 (issue 24);
  (q) images/s with the review features (quality signals of a model with calibrated flags,
      thumbnails and review.html) against without them (a model without flags,
      --no-review-page), without --tta — target >= 0.9 (they cost at most 10%);
  (q') --qc full (the flipped pass for flip_disagreement) against plain prediction (expected
      about 0.5: twice the model's work), and --tta with the flags against --tta without them
      (the flip signal reuses a TTA pass: expected near 1).
The model is a default U-Net (depth 4, base 16) with random weights: speed does not depend on
the weights.

With ``--volumes``, instead: one 512x512x200 uint16 NIfTI volume (``.nii.gz``) against the same
200 slices as 16-bit PNG files, through the same folder prediction (float32):
  (v1) slices/s of the volume against slices/s of the PNG files — target >= 0.9;
  (v2) how much a child process's memory rose while segmenting the volume (sampled every
       20 ms, from after the imports), minus the same for its slices as PNG files (the model,
       its activations at this batch size, the reader look-ahead), against the volume's float32
       size — target <= 2x.

    .venv/bin/python bench/predict.py [--count 60] [--many 300] [--large 8000]
    .venv/bin/python bench/predict.py --volumes [--slices 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet TensorFlow)


def make_model(run_dir: Path, input_dtype: str = "uint8") -> None:
    """A default U-Net with random weights, saved as a run folder (model.keras + model.json)."""
    from unet.config import TrainConfig
    from unet.model.builders import build_unet
    from unet.store.model_files import ModelInfo, model_file

    config = TrainConfig(num_classes=2)
    run_dir.mkdir(parents=True)
    build_unet(config.model, 1).save(model_file(run_dir))
    ModelInfo(
        architecture="unet",
        channels=1,
        input_dtype=input_dtype,
        size_multiple=16,
        num_classes=2,
        model_version="bench-random",
    ).write(run_dir)


def add_int8(run_dir: Path, images: list[Path], against: str) -> str:
    """Quantise the bench model as training does (calibrated on 32 of the images, checked on
    64) and record the check in its model.json; returns the check as a line."""
    import keras
    import numpy as np

    from data_catalog.cases import Case
    from data_catalog.images import read_image
    from unet.evaluation.int8_check import check_int8
    from unet.store.model_files import ModelInfo, model_file

    path = model_file(run_dir)
    info = ModelInfo.read(run_dir)
    cases = (
        Case(p.stem, read_image(p), np.zeros(read_image(p).shape[:2], np.uint8)) for p in images
    )
    check = check_int8(path, info, keras.models.load_model(path, compile=False), cases, against)
    info.model_copy(update={"int8_check": check}).write(run_dir)
    return (
        f"int8 export: masks agree with float32 on {check.agreement:.4%} of {check.pixels} "
        f"pixels ({check.cases} images; random weights, so this says little), "
        f"{check.speedup:.2f}x the images/s of {check.against} in the check"
    )


def add_quality_reference(run_dir: Path, images: list[Path]) -> None:
    """Give the bench model calibrated-looking quality flags (a reference from a few images,
    every signal used), so prediction computes and applies all of them."""
    from data_catalog.images import read_image
    from unet.inference.segmenter import Segmenter
    from unet.quality.reference import (
        SIGNALS,
        SignalCalibration,
        intensity_percentiles,
        reference_from_cases,
    )
    from unet.store.model_files import ModelInfo

    segmenter = Segmenter(run_dir, precision="float32")
    prepared = [segmenter.prepare(read_image(path), path) for path in images[:4]]
    reference = reference_from_cases([intensity_percentiles(p) for p in prepared], [-1.0] * 4)
    signals = {
        name: SignalCalibration(threshold=0.5, youden=0.5, spearman=-0.5, recall=0.5)
        for name in SIGNALS
    }
    info = ModelInfo.read(run_dir)
    info.model_copy(update={"quality": reference.model_copy(update={"signals": signals})}).write(
        run_dir
    )


def review_cost(model: Path, scans: Path, tmp: Path, batch_size: int) -> dict[str, float]:
    """images/s without the review features, with them (``--qc fast``), with ``--qc full``,
    and with ``--tta`` without and with the flags (see (q))."""
    import shutil as copier

    from unet.config import PredictConfig
    from unet.prediction import predict_folder

    flagged = tmp / "model-flags"
    copier.copytree(model, flagged)
    add_quality_reference(flagged, sorted(scans.glob("*.png")))
    runs = {
        "plain": (model, "fast", False),
        "fast": (flagged, "fast", False),
        "full": (flagged, "full", False),
        "tta": (model, "fast", True),
        "tta+flags": (flagged, "fast", True),
    }
    rates = {}
    for name, (run_dir, qc, tta) in runs.items():
        config = PredictConfig(
            model=str(run_dir),
            input_dir=str(scans),
            output_dir=str(tmp / f"review-{name}"),
            batch_size=batch_size,
            precision="float32",
            review_page=run_dir == flagged,
            qc=qc,
            tta=tta,
        )
        started = time.perf_counter()
        report = predict_folder(config)
        rates[name] = len(report) / (time.perf_counter() - started)
        assert (run_dir == flagged) == report["review"].notna().all()
        flips = run_dir == flagged and (qc == "full" or tta)
        assert flips == report["flip_disagreement"].notna().all()
    return rates


def print_review_cost(rates: dict[str, float]) -> None:
    print(
        f"(q) review features (quality signals, thumbnails, review.html): {rates['fast']:.2f} "
        f"images/s against {rates['plain']:.2f} without -> ratio "
        f"{rates['fast'] / rates['plain']:.2f} (target >= 0.9; float32, no --tta)"
    )
    print(
        f"(q') --qc full (adds the flipped pass): {rates['full']:.2f} images/s -> ratio "
        f"{rates['full'] / rates['plain']:.2f} of plain prediction; with --tta the flip signal "
        f"comes with the TTA passes: {rates['tta+flags']:.2f} against {rates['tta']:.2f} images/s "
        f"-> ratio {rates['tta+flags'] / rates['tta']:.2f}"
    )


def make_volume(folder: Path, slices: int, side: int = 512) -> tuple[Path, Path, Path]:
    """A smooth random uint16 volume as ``.nii.gz``, its slices as 16-bit PNGs in a folder, and
    one slice alone in another folder."""
    import nibabel
    import numpy as np
    from scipy import ndimage

    from data_catalog.images import write_png_atomic

    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 4000, (side // 8, side // 8, max(2, slices // 8)))
    data = ndimage.zoom(coarse, (8, 8, slices / coarse.shape[2]), order=1)[:side, :side, :slices]
    data = np.clip(data + rng.normal(0, 50, data.shape), 0, 65535).astype(np.uint16)
    volume_dir, png_dir, one_dir = folder / "volume", folder / "pngs", folder / "one"
    for path in (volume_dir, png_dir, one_dir):
        path.mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1])), volume_dir / "scan.nii.gz")
    for index in range(data.shape[2]):
        write_png_atomic(png_dir / f"slice_{index:04d}.png", data[:, :, index])
    write_png_atomic(one_dir / "slice.png", data[:, :, 0])
    return volume_dir, png_dir, one_dir


SAMPLED_PEAK = """
import sys, threading, time, json
sys.path.insert(0, {root!r})
import tasks
from unet.config import PredictConfig
from unet.prediction import predict_folder

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

peak, done = [rss()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(rss()); time.sleep(0.02)
before = rss()
thread = threading.Thread(target=sample); thread.start()
predict_folder(PredictConfig(model={model!r}, input_dir={inputs!r}, output_dir={out!r},
               precision="float32"))
done.set(); thread.join()
print(json.dumps(max(peak) - before))
"""


def sampled_peak_mb(model: Path, inputs: Path, out: Path) -> float:
    """The most a child process's RSS rose (MiB, sampled every 20 ms) while it segmented
    ``inputs``, above what it held after importing TensorFlow."""
    code = SAMPLED_PEAK.format(root=str(ROOT), model=str(model), inputs=str(inputs), out=str(out))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def volumes_benchmark(slices: int, batch_size: int) -> int:
    """(v1) and (v2) of the module's description."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", "uint16")
        volume_dir, png_dir, one_dir = make_volume(tmp, slices)
        rates = {}
        for name, folder, count in (("volume", volume_dir, slices), ("pngs", png_dir, slices)):
            seconds = _timed(
                lambda f=folder, n=name: segflow_predict(
                    tmp / "model", f, tmp / f"out-{n}", batch_size, "float32"
                )
            )
            rates[name] = count / seconds
        print(
            f"(v1) one 512x512x{slices} NIfTI volume: {rates['volume']:.2f} slices/s "
            f"({slices / rates['volume']:.1f} s per volume); the same slices as 16-bit PNG "
            f"files: {rates['pngs']:.2f} slices/s -> ratio {rates['volume'] / rates['pngs']:.2f} "
            "(target >= 0.9)"
        )
        volume_peak = sampled_peak_mb(tmp / "model", volume_dir, tmp / "peak-volume")
        files_peak = sampled_peak_mb(tmp / "model", png_dir, tmp / "peak-pngs")
        float32_mb = 512 * 512 * slices * 4 / 2**20
        extra = volume_peak - files_peak
        print(
            f"(v2) memory a child process gained while segmenting (the model and its "
            f"activations included): the volume {volume_peak:.0f} MiB, its slices as PNG files "
            f"{files_peak:.0f} MiB -> {extra:.0f} MiB for holding the volume, "
            f"{extra / float32_mb:.2f}x its float32 size ({float32_mb:.0f} MiB; target <= 2x)"
        )
    return 0


def copy_images(source: Path, target: Path, count: int) -> list[Path]:
    target.mkdir(parents=True)
    originals = sorted(source.glob("*.png"))
    paths = []
    for index in range(count):
        path = target / f"scan_{index:04d}.png"
        shutil.copy(originals[index % len(originals)], path)
        paths.append(path)
    return paths


def seed_style_loop(model_path: Path, paths: list[Path], out: Path, size: int = 512) -> float:
    """The seed project's way: one image at a time through model.predict."""
    import keras
    import numpy as np
    from PIL import Image

    model = keras.models.load_model(model_path, compile=False)
    out.mkdir()
    started = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("L")
        width, height = image.size
        scale = min(size / width, size / height)
        resized = image.resize((int(width * scale), int(height * scale)), Image.BICUBIC)
        canvas = Image.new("L", (size, size), 128)
        canvas.paste(resized, ((size - resized.size[0]) // 2, (size - resized.size[1]) // 2))
        batch = np.asarray(canvas, np.float32)[None, ..., None] / 255
        probabilities = model.predict(batch, verbose=0)[0]
        mask = Image.fromarray((probabilities.argmax(-1) * 255).astype(np.uint8))
        mask.resize((width, height), Image.NEAREST).save(out / path.name)
    return len(paths) / (time.perf_counter() - started)


def segflow_predict(
    model: Path, inputs: Path, out: Path, batch_size: int, precision: str = "float32"
) -> float:
    from unet.config import PredictConfig
    from unet.prediction import predict_folder

    started = time.perf_counter()
    report = predict_folder(
        PredictConfig(
            model=str(model),
            input_dir=str(inputs),
            output_dir=str(out),
            batch_size=batch_size,
            precision=precision,
        )
    )
    assert (report["status"] == "ok").all(), report["error"].dropna().tolist()[:3]
    return len(report) / (time.perf_counter() - started)


def forward_only(model: Path, count: int, batch_size: int, precision: str = "float32") -> float:
    import numpy as np

    from unet.inference.segmenter import Segmenter

    segmenter = Segmenter(model, precision=precision)
    batch = [np.random.default_rng(0).random((512, 512, 1), dtype=np.float32)] * batch_size
    segmenter.predict_probabilities(batch)  # trace
    started = time.perf_counter()
    for _ in range(count // batch_size):
        segmenter.predict_probabilities(batch)
    return (count // batch_size) * batch_size / (time.perf_counter() - started)


def start_parts(model: Path, batch_size: int, precision: str = "float32") -> dict[str, float]:
    """The seconds a prediction spends before its first batch: reading the model file, the
    inference copy (batch norms folded, the precision's graphs), and the first batch's forward
    pass over a steady one's (tracing the graph, oneDNN's first primitives)."""
    import keras
    import numpy as np

    from unet.inference.segmenter import Segmenter

    started = time.perf_counter()
    loaded = keras.models.load_model(model / "model.keras", compile=False)
    read = time.perf_counter()
    segmenter = Segmenter(model, precision=precision, batch_size=batch_size, loaded=loaded)
    built = time.perf_counter()
    batch = [np.random.default_rng(0).random((512, 512, 1), dtype=np.float32)] * batch_size
    segmenter.segment(batch)
    first = time.perf_counter()
    segmenter.segment(batch)
    steady = time.perf_counter() - first
    return {
        "reading the model": read - started,
        "its inference copy": built - read,
        "tracing (first batch over a steady one)": max(0.0, first - built - steady),
    }


def forward_gflop(model, size: int = 512) -> float:
    """Forward GFLOPs of one ``size`` x ``size`` image, counted from the convolutions' shapes
    (``model``: a Keras model or a ``.keras`` path)."""
    import keras

    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, compile=False)
    flops = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            size //= 2
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            size *= 2
            kernel = layer.kernel.shape
            flops += 2 * size * size * kernel[0] * kernel[1] * kernel[2] * kernel[3] / 4
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel.shape
            flops += 2 * size * size * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    return flops / 1e9


def numpy_gflops(n: int = 2048, repeats: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


MATMUL_SIZES = (1024, 2048, 4096)


def best_matmul(bf16_units: bool, repeats: int = 3) -> tuple[str, float]:
    """The machine's best matrix product, GFLOP/s, and what gave it: the best over
    :data:`MATMUL_SIZES` (each timed over ``repeats`` products) of numpy's float32,
    TensorFlow's float32 and, on a CPU with bfloat16 units, TensorFlow's bfloat16 (issue 24:
    one 2048 product gave 381 GFLOP/s in one run and 1,142 in another on the same kind of
    machine)."""
    from unet.inference.precision import measure_bf16_probe

    rates: dict[str, float] = {}
    for size in MATMUL_SIZES:
        probe = measure_bf16_probe(size=size, repeats=repeats)
        measured = {
            "numpy float32": numpy_gflops(size, repeats),
            "TensorFlow float32": probe.float32_gflops,
            **({"TensorFlow bfloat16": probe.bfloat16_gflops} if bf16_units else {}),
        }
        for name, rate in measured.items():
            rates[name] = max(rates.get(name, 0.0), rate)
    name, rate = max(rates.items(), key=lambda item: item[1])
    return f"{name} matmul, best of sizes {', '.join(map(str, MATMUL_SIZES))}", rate


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def peak_memory_mb(model: Path, inputs: Path, out: Path) -> float:
    """Max RSS of a child process that segments ``inputs`` (MiB)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import tasks\n"
        "from unet.config import PredictConfig\nfrom unet.prediction import predict_folder\n"
        f"predict_folder(PredictConfig(model={str(model)!r}, input_dir={str(inputs)!r}, "
        f"output_dir={str(out)!r}))\n"
        "import resource, json\n"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/isbi2012-membrane"))
    parser.add_argument("--count", type=int, default=60, help="images for (a), (b), (d)")
    parser.add_argument("--many", type=int, default=300, help="images for the memory ratio")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--large",
        type=int,
        default=0,
        help="also measure peak memory for one LARGE x LARGE image against one 2000x2000 image "
        "(e.g. 8000: about 70 s more)",
    )
    parser.add_argument("--volumes", action="store_true", help="the volume benchmark instead")
    parser.add_argument("--review-only", action="store_true", help="only (q) and (q')")
    parser.add_argument("--slices", type=int, default=200, help="--volumes: slices per volume")
    args = parser.parse_args()
    if args.volumes:
        return volumes_benchmark(args.slices, args.batch_size)
    data = Path(args.data) / "images"
    if not data.is_dir():
        print(f"skipped: ISBI images not found at {data}")
        return 0
    from unet.inference.precision import read_cpu_info

    cpu = read_cpu_info()
    precisions = ["float32"] + (["bfloat16"] if cpu.bf16_flags else [])
    print(
        f"CPU {cpu.model}; bfloat16 units: {', '.join(cpu.bf16_flags) or 'none'}; int8 units: "
        f"{', '.join(cpu.int8_flags) or 'none'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model")
        paths = copy_images(data, tmp / "scans", args.count)
        if cpu.int8_flags and not args.review_only:
            precisions.append("int8")
            print(add_int8(tmp / "model", paths, precisions[-2]))
        if args.review_only:
            print_review_cost(review_cost(tmp / "model", tmp / "scans", tmp, args.batch_size))
            return 0
        ours = {
            precision: segflow_predict(
                tmp / "model", tmp / "scans", tmp / f"out-{precision}", args.batch_size, precision
            )
            for precision in precisions
        }
        seed = seed_style_loop(
            tmp / "model" / "model.keras", paths[: max(10, args.count // 3)], tmp / "seed-out"
        )
        for precision, rate in ours.items():
            print(
                f"(a) segflow predict ({precision}) {rate:.2f} images/s, seed-style loop "
                f"{seed:.2f} images/s -> ratio {rate / seed:.2f}x (target >= 3x, 2.5x with "
                f"bfloat16 units; 512x512 PNGs, batch {args.batch_size})"
            )
        if "bfloat16" in ours:
            print(
                f"(a') bfloat16 against float32, end to end: {ours['bfloat16']:.2f} / "
                f"{ours['float32']:.2f} images/s -> {ours['bfloat16'] / ours['float32']:.2f}x "
                "(target >= 1.3)"
            )
        if "int8" in ours:
            other = precisions[-2]
            print(
                f"(i) int8 (ONNX Runtime, quantised) against {other}, end to end: "
                f"{ours['int8']:.2f} / {ours[other]:.2f} images/s -> "
                f"{ours['int8'] / ours[other]:.2f}x (target >= 1.5x)"
            )
        copy_images(data, tmp / "start", args.batch_size)
        forwards = {}
        for precision, rate in ours.items():
            forward = forwards[precision] = forward_only(
                tmp / "model", args.count, args.batch_size, precision
            )
            print(
                f"(b) end to end ({precision}) {rate:.2f} images/s, forward pass on tensors in "
                f"memory {forward:.2f} images/s -> ratio {rate / forward:.2f} (target >= 0.9)"
            )
            start = args.batch_size / segflow_predict(
                tmp / "model", tmp / "start", tmp / f"start-{precision}", args.batch_size, precision
            )
            steady = (args.count - args.batch_size) / max(args.count / rate - start, 1e-9)
            parts = start_parts(tmp / "model", args.batch_size, precision)
            print(
                f"(b') where it goes ({precision}): one batch end to end {start:.2f} s, of "
                f"which {', '.join(f'{name} {seconds:.2f} s' for name, seconds in parts.items())}"
                f"; the {args.count - args.batch_size} files after it {steady:.2f} images/s "
                f"-> steady ratio {steady / forward:.2f} against the forward pass"
            )
        print_review_cost(review_cost(tmp / "model", tmp / "scans", tmp, args.batch_size))
        ours_best = max(ours.values())
        copy_images(data, tmp / "few", 30)
        copy_images(data, tmp / "many", args.many)
        few = peak_memory_mb(tmp / "model", tmp / "few", tmp / "few-out")
        many = peak_memory_mb(tmp / "model", tmp / "many", tmp / "many-out")
        print(
            f"(c) peak memory: 30 images {few:.0f} MiB, {args.many} images {many:.0f} MiB -> "
            f"ratio {many / few:.2f} (target <= 1.2)"
        )
        gflop = forward_gflop(tmp / "model" / "model.keras")
        effective = gflop * ours_best
        forward_best = max(forwards.values())
        name, matmul = best_matmul(bool(cpu.bf16_flags))
        print(
            f"(d) {gflop:.1f} GFLOP per 512x512 image x {ours_best:.2f} images/s end to end = "
            f"{effective:.0f} GFLOP/s; the machine's best matrix product ({name}) "
            f"{matmul:.0f} GFLOP/s -> ratio {effective / matmul:.2f} (target >= 0.45); the "
            f"forward pass alone {gflop * forward_best:.0f} GFLOP/s -> ratio "
            f"{gflop * forward_best / matmul:.2f} (target >= 0.5)"
        )
        if args.large:
            sizes = (2000, args.large)
            peaks = [
                peak_memory_mb(
                    tmp / "model", large_image(tmp / f"large-{side}", side), tmp / f"o{side}"
                )
                for side in sizes
            ]
            print(
                f"(e) peak memory: one {sizes[0]}x{sizes[0]} image {peaks[0]:.0f} MiB, one "
                f"{sizes[1]}x{sizes[1]} image {peaks[1]:.0f} MiB -> {peaks[1] / peaks[0]:.2f}x "
                f"for {(sizes[1] / sizes[0]) ** 2:.0f}x the pixels (sliding window, band by band)"
            )
    return 0


def large_image(folder: Path, side: int) -> Path:
    """A folder holding one smooth ``side`` x ``side`` 8-bit PNG."""
    import cv2
    import numpy as np

    folder.mkdir()
    y = np.arange(side, dtype=np.float32)[:, None]
    x = np.arange(side, dtype=np.float32)[None, :]
    cv2.imwrite(
        str(folder / "large.png"), ((np.sin(x / 37) * np.cos(y / 23) + 1) * 120).astype(np.uint8)
    )
    return folder


if __name__ == "__main__":
    sys.exit(main())
