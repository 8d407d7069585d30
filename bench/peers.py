"""Side by side with what a user would run instead: the same U-Net in PyTorch on the CPU.

Builds segflow's default U-Net (depth 4, base 16, batch norm, 1 channel, 2 classes) and, in
PyTorch, (1) the same network written out layer for layer (3x3 conv + BN + ReLU twice per level,
2x2 max pooling, 2x2 transposed convolutions, the same widths: the FLOPs match) and (2) nnU-Net
v2's ``PlainConvUNet`` from ``dynamic-network-architectures`` with the same stages and widths
(strided convolutions instead of pooling, as nnU-Net builds it). Prints, measured in one run,
interleaved rounds, medians:

  (f) forward pass images/s at 512x512 and 256x256, batch 4: segflow (its inference graph,
      batch norms folded, in the precision ``--precision auto`` would take here) against
      PyTorch (eval, ``torch.inference_mode``, bfloat16 autocast where the CPU has bfloat16
      units, else float32; channels-last) — target >= 1.0x;
  (t) training steps/s at 128x128, batch 8 (the planned LGG settings): segflow's compiled
      training step (mixed_bfloat16 where it pays, Adam, Dice + cross-entropy) against
      PyTorch's (autocast bfloat16, Adam, Dice + cross-entropy) — target >= 1.0x; steady
      steps on both sides (segflow's timed from its first step's end: see
      ``segflow_train_step``).

PyTorch is a bench-only extra, never a dependency:

    .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    .venv/bin/pip install dynamic-network-architectures
    .venv/bin/python bench/peers.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet TensorFlow)

WIDTHS = (16, 32, 64, 128, 256)


def torch_unet(torch):
    """segflow's classic U-Net, layer for layer, in PyTorch."""
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )  # fmt: skip

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.ModuleList()
            cin = 1
            for width in WIDTHS[:-1]:
                self.down.append(block(cin, width))
                cin = width
            self.bottom = block(WIDTHS[-2], WIDTHS[-1])
            self.up = nn.ModuleList(
                nn.ConvTranspose2d(WIDTHS[i + 1], WIDTHS[i], 2, stride=2)
                for i in reversed(range(len(WIDTHS) - 1))
            )
            self.dec = nn.ModuleList(
                block(2 * WIDTHS[i], WIDTHS[i]) for i in reversed(range(len(WIDTHS) - 1))
            )
            self.head = nn.Conv2d(WIDTHS[0], 2, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def plain_conv_unet(torch):
    """nnU-Net v2's PlainConvUNet with the same stages and widths (None if not installed)."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        return None
    nn = torch.nn
    return PlainConvUNet(
        input_channels=1, n_stages=len(WIDTHS), features_per_stage=list(WIDTHS),
        conv_op=nn.Conv2d, kernel_sizes=3, strides=[1, 2, 2, 2, 2], n_conv_per_stage=2,
        num_classes=2, n_conv_per_stage_decoder=2, conv_bias=True, norm_op=nn.BatchNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.ReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )  # fmt: skip


def interleaved_rates(runs: dict, count: int, rounds: int) -> dict[str, float]:
    """Median ``count / seconds`` of each run's calls, after one warm-up call each, the runs
    taken in turn round after round (a slow phase of the machine hits all alike); a run that
    returns seconds is timed by them."""
    for run in runs.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            timed = run()  # a run may time its own steady part (segflow's training steps)
            ended = time.perf_counter()
            rates[name].append(count / (timed if isinstance(timed, float) else ended - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def torch_forward(torch, model, size: int, batch: int, bf16: bool):
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, size, size).to(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x).softmax(1)

    return run


def torch_train_step(torch, model, bf16: bool, steps: int = 5, batch: int = 8, size: int = 128):
    model = model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, size, size).to(memory_format=torch.channels_last)
    y = (torch.rand(batch, size, size) > 0.9).long()

    def run():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = model(x)
            logits = logits.float()
            probabilities = logits.softmax(1)[:, 1]
            target = y.float()
            dice = 1 - (2 * (probabilities * target).sum() + 1) / (
                probabilities.sum() + target.sum() + 1
            )
            loss = torch.nn.functional.cross_entropy(logits, y) + dice
            loss.backward()
            optimizer.step()

    return run


def segflow_forward(size: int, batch: int, precision: str, folder: Path):
    import numpy as np

    from unet.config import TrainConfig
    from unet.inference.segmenter import Segmenter
    from unet.model.builders import build_unet
    from unet.store.model_files import ModelInfo, model_file

    if not folder.is_dir():
        folder.mkdir(parents=True)
        build_unet(TrainConfig(num_classes=2).model, 1).save(model_file(folder))
        ModelInfo(
            architecture="unet", channels=1, input_dtype="uint8", size_multiple=16,
            num_classes=2, model_version="bench-random",
        ).write(folder)  # fmt: skip
    segmenter = Segmenter(folder, precision=precision)
    images = [np.random.default_rng(0).random((size, size, 1), dtype=np.float32)] * batch
    return lambda: segmenter.predict_probabilities(images)


def segflow_train_step(policy: str, steps: int = 5, batch: int = 8, size: int = 128):
    import keras
    import numpy as np
    import tensorflow as tf

    from unet.config import TrainConfig
    from unet.model.builders import build_unet
    from unet.training.optimizer import compile_unet

    config = TrainConfig(num_classes=2, batch_size=batch, image_size=size)
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = compile_unet(build_unet(config.model, 1), config, 100)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
    y = (rng.random((batch, size, size)) > 0.9).astype(np.int32)
    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs=None: ends.append(time.perf_counter())
    )

    def run() -> float:
        """``steps`` training steps' seconds, from the end of a first one: a ``model.fit``
        call's own start and end are not a step's cost (measured on Zen 3: its end waits up
        to ~5 s for tf.data's autotuning thread; training pays that once per ``fit`` call,
        a few times a run, where a 5-step call here paid it every round)."""
        ends.clear()
        model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[timer])
        return ends[-1] - ends[0]

    return run


def child_train_rate(name: str, policy: str, bf16: bool) -> float:
    """Steps/s of one training run (after a warm-up) in a child process of its own."""
    import subprocess

    command = [sys.executable, __file__, "--train-child", name, policy, str(int(bf16))]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def train_child(name: str, policy: str, bf16: bool) -> None:
    """Prints the steps/s of ``name``'s training step (the child process of the parent)."""
    if name == "segflow":
        run = segflow_train_step(policy)
    else:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = torch_unet(torch) if name.startswith("same") else plain_conv_unet(torch)
        run = torch_train_step(torch, model, bf16)
    print(interleaved_rates({name: run}, 5, 3)[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        name, policy, bf16 = args.train_child
        train_child(name, policy, bf16 == "1")
        return 0
    try:
        import torch
    except ImportError:
        print("skipped: PyTorch is not installed (a bench-only extra; see the docstring)")
        return 0
    from unet.inference.precision import read_cpu_info, resolve_inference_precision
    from unet.store.model_files import ModelInfo

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cpu = read_cpu_info()
    bf16 = bool(cpu.bf16_flags)
    auto = resolve_inference_precision("auto", ModelInfo(
        architecture="unet", channels=1, input_dtype="uint8", size_multiple=16, num_classes=2,
        precision_check={"bfloat16_agreement": 1.0, "pixels": 1, "tuned_with": "bfloat16"},
    ))  # fmt: skip
    precision = "bfloat16" if auto.compute_dtype == "bfloat16" else "float32"
    print(
        f"CPU {cpu.model}; bfloat16 units: {', '.join(cpu.bf16_flags) or 'none'}; torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads, bfloat16 autocast: {bf16}); "
        f"segflow in {precision}"
    )
    peers = {"same U-Net in PyTorch": torch_unet(torch)}
    plain = plain_conv_unet(torch)
    if plain is not None:
        peers["nnU-Net PlainConvUNet"] = plain
    else:
        print("(dynamic-network-architectures not installed: PlainConvUNet left out)")
    folder = Path(tempfile.mkdtemp()) / "model"
    for size, batch in ((512, 4), (256, 4)):
        runs = {"segflow": segflow_forward(size, batch, precision, folder)}
        for name, model in peers.items():
            runs[name] = torch_forward(torch, model, size, batch, bf16)
        rates = interleaved_rates(runs, batch, args.rounds)
        ours = rates["segflow"]
        for name in peers:
            theirs = rates[name]
            print(
                f"(f) forward {size}x{size}, batch {batch}: segflow {ours:.2f} images/s, {name} "
                f"{theirs:.2f} -> {ours / theirs:.2f}x (target >= 1.0)"
            )
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    # TensorFlow and PyTorch training in one process crash (both bring their own OpenMP and
    # oneDNN): each training run is a child process, taken in turn round after round
    names = ["segflow", *peers]
    rates = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            rates[name].append(child_train_rate(name, policy, bf16))
    ours = statistics.median(rates["segflow"])
    for name in peers:
        theirs = statistics.median(rates[name])
        print(
            f"(t) training step 128x128, batch 8 ({policy} / torch autocast {bf16}): segflow "
            f"{ours:.2f} steps/s, {name} {theirs:.2f} -> {ours / theirs:.2f}x (target >= 1.0)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
