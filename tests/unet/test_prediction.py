import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_catalog.cases import Case
from data_catalog.images import write_png_atomic
from unet.config import PredictConfig
from unet.prediction import REPORT_COLUMNS, predict_folder


def test_every_input_gets_a_same_size_mask_or_an_error_row(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    write_png_atomic(inputs / "a.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    write_png_atomic(inputs / "b.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    write_png_atomic(inputs / "nested/odd.png", rng.integers(0, 255, (37, 53), dtype=np.uint8))
    grey_as_rgb = np.repeat(rng.integers(0, 255, (20, 30, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(grey_as_rgb).save(inputs / "c.jpg")  # JPEG: channels now differ slightly
    colour = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(colour).save(inputs / "colour.png")  # a 1-channel model cannot take it
    write_png_atomic(inputs / "deep.png", rng.integers(0, 65535, (16, 16), dtype=np.uint16))
    full = (inputs / "a.png").read_bytes()
    (inputs / "truncated.png").write_bytes(full[: len(full) // 2])
    (inputs / "zero.png").write_bytes(b"")
    (inputs / "readme.txt").write_text("not an image")

    report = predict_folder(
        PredictConfig(
            model=str(trained_run),
            input_dir=str(inputs),
            output_dir=str(tmp_path / "out"),
            batch_size=2,
            mask_values="index",
        )
    )
    assert list(report.columns) == REPORT_COLUMNS
    saved = pd.read_csv(tmp_path / "out/report.csv")
    assert saved["input"].tolist() == report["input"].tolist()
    assert saved["status"].tolist() == report["status"].tolist()
    rows = report.set_index("input")
    assert set(rows.index) == {
        "a.png",
        "b.png",
        "nested/odd.png",
        "c.jpg",
        "deep.png",
        "truncated.png",
        "zero.png",
        "readme.txt",
        "colour.png",
    }
    errors = rows[rows["status"] == "error"]["error"].to_dict()
    assert set(errors) == {"truncated.png", "zero.png", "readme.txt", "colour.png"}
    assert (
        "a coloured scan" in errors["colour.png"] and "--colour-input grey" in errors["colour.png"]
    )
    assert "truncated" in errors["truncated.png"] and "empty" in errors["zero.png"]
    assert "not a recognised image" in errors["readme.txt"]
    for name, (height, width) in {
        "a.png": (32, 32),
        "nested/odd.png": (37, 53),
        "c.jpg": (20, 30),
        "deep.png": (16, 16),
    }.items():
        mask = np.asarray(Image.open(tmp_path / "out" / rows.loc[name, "mask"]))
        assert mask.shape == (height, width), name
        assert set(np.unique(mask)) <= {0, 1}
        assert rows.loc[name, "foreground_fraction"] == pytest.approx(np.mean(mask > 0), abs=1e-6)
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_masks_0_255_and_name_clashes(trained_run, tmp_path):
    inputs = tmp_path / "in"
    image = np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)
    write_png_atomic(inputs / "x.png", image)
    Image.fromarray(image).save(inputs / "x.tif")
    report = predict_folder(
        PredictConfig(
            model=str(trained_run),
            input_dir=str(inputs),
            output_dir=str(inputs / "masks"),
            mask_values="255",
        )
    )
    assert sorted(report["mask"]) == ["x.png.png", "x.tif.png"]
    mask = np.asarray(Image.open(inputs / "masks" / "x.tif.png"))
    assert set(np.unique(mask)) <= {0, 255}
    # The output folder inside the input folder is not read back as input on a second run.
    again = predict_folder(
        PredictConfig(
            model=str(trained_run), input_dir=str(inputs), output_dir=str(inputs / "masks")
        )
    )
    assert len(again) == 2


def test_large_images_use_a_blended_sliding_window(trained_run, tmp_path):
    from data_catalog.hashing import hash_file
    from unet.inference.segmenter import Segmenter

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (150, 250), dtype=np.uint8)
    write_png_atomic(tmp_path / "in" / "big.png", image)
    report = predict_folder(
        PredictConfig(
            model=str(trained_run),
            input_dir=str(tmp_path / "in"),
            output_dir=str(tmp_path / "out"),
            tile_size=64,
            tile_overlap=0.5,
        )
    )
    row = report.iloc[0]
    mask = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    assert mask.shape == (150, 250) and row["status"] == "ok"
    assert row["input_sha256"] == hash_file(tmp_path / "in" / "big.png")
    assert row["components"] >= 0

    segmenter = Segmenter(trained_run)
    prepared = segmenter.prepare(image)
    with pytest.raises(ValueError, match="multiple of 4"):
        Segmenter(trained_run, tile_size=30)

    # With a pixel-wise stand-in model, tiles and blending must reproduce the whole image
    # exactly: every pixel's blended probability is its own, whatever the weights.
    def pixelwise(tiles):
        batch = np.stack(tiles)[..., :1]
        return np.concatenate([1 - batch, batch], axis=-1)

    segmenter.predict_probabilities = pixelwise
    segmenter.min_component_size, segmenter.threshold = 0, None
    for size, overlap in ((64, 0.5), (32, 0.25), (128, 0.0)):
        segmenter.tile_size, segmenter.tile_overlap, segmenter.batch_size = size, overlap, 3
        (result,) = segmenter.segment([prepared])
        classes, confidence = result.classes, result.mean_confidence
        expected = (prepared[..., 0] > 0.5).astype(np.uint8)
        assert classes.shape == (150, 250)
        assert np.array_equal(classes, expected), (size, overlap)
        full = np.maximum(prepared[..., 0], 1 - prepared[..., 0]).mean()
        assert confidence == pytest.approx(full, rel=1e-5)


def test_read_ahead_is_bounded_in_bytes_as_well_as_in_files():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from unet.prediction import prefetch

    alive, peak, lock = [0], [0], threading.Lock()

    def load(size: int) -> np.ndarray:
        with lock:
            alive[0] += size
            peak[0] = max(peak[0], alive[0])
        return np.zeros(size, np.uint8)

    sizes = [100] * 5 + [1000] * 12 + [10] * 20
    out = []
    with ThreadPoolExecutor(2) as pool:
        for array in prefetch(pool, load, sizes, 8, budget=2500, size=lambda a: a.nbytes):
            time.sleep(0.002)  # a slow consumer: the readers run ahead as far as allowed
            out.append(array.nbytes)
            with lock:
                alive[0] -= array.nbytes
    assert out == sizes  # every item, in order
    # 8 files ahead would hold 8000 bytes of the large ones; the budget keeps it near 2500
    assert peak[0] <= 2500 + 2 * 1000, peak[0]


def test_gaussian_weights_favour_the_tile_centre():
    from unet.inference.tiling import gaussian_weights

    weights = gaussian_weights(64)
    assert weights.shape == (64, 64) and weights.min() >= 1e-3
    assert weights[31, 31] > weights[31, 5] > weights[0, 0]


def test_class_reductions_equal_numpys_including_ties():
    from unet.inference.postprocessing import class_argmax, class_max

    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        probabilities = rng.integers(0, 4, (3, 17, 23, classes)).astype(np.float32)  # many ties
        assert np.array_equal(class_max(probabilities), probabilities.max(axis=-1))
        argmax = class_argmax(probabilities)
        assert argmax.dtype == np.uint8
        assert np.array_equal(argmax, probabilities.argmax(axis=-1))


def test_killed_run_resumes_without_duplicates_or_broken_masks(trained_run, tmp_path):
    import json
    import subprocess
    import sys
    import textwrap
    import time

    rng = np.random.default_rng(3)
    inputs, out = tmp_path / "in", tmp_path / "out"
    for index in range(240):  # a few hundred
        write_png_atomic(
            inputs / f"scan_{index:03d}.png", rng.integers(0, 255, (48, 48), dtype=np.uint8)
        )
    script = tmp_path / "predict.py"
    script.write_text(
        textwrap.dedent(f"""
        import tasks
        from unet.config import PredictConfig
        from unet.prediction import predict_folder
        predict_folder(PredictConfig(model={str(trained_run)!r}, input_dir={str(inputs)!r},
                                     output_dir={str(out)!r}, batch_size=1))
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    journal = out / ".segflow-journal.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if journal.is_file() and len(journal.read_text().splitlines()) >= 60:
                break
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    finished_before = len(journal.read_text().splitlines())
    assert 60 <= finished_before < 240, "the run ended before it could be killed"

    report = predict_folder(
        PredictConfig(
            model=str(trained_run), input_dir=str(inputs), output_dir=str(out), batch_size=4
        )
    )
    assert len(report) == 240 and report["input"].is_unique
    assert set(report["status"]) == {"ok", "skipped"}
    assert (report["status"] == "skipped").sum() >= finished_before - 1
    assert len(pd.read_csv(out / "report.csv")) == 240
    for name in report["mask"]:
        assert np.asarray(Image.open(out / name)).shape == (48, 48)
    assert not list(out.rglob(".*.tmp"))
    rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert {row["input"] for row in rows} == set(report["input"])
    again = predict_folder(
        PredictConfig(model=str(trained_run), input_dir=str(inputs), output_dir=str(out))
    )
    assert (again["status"] == "skipped").all()


def test_mixed_folder_of_formats_and_sizes(trained_run, tmp_path):
    """The bulk-segmentation acceptance folder: every image gets a mask of its own size."""
    import tifffile

    from tests.data_catalog.test_readers import _write_dicom

    rng = np.random.default_rng(4)
    inputs = tmp_path / "in"
    write_png_atomic(inputs / "plain.png", rng.integers(0, 255, (40, 60), dtype=np.uint8))
    tifffile.imwrite(inputs / "deep.tif", rng.integers(0, 65535, (33, 47), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(inputs / "photo.jpg")
    _write_dicom(inputs / "scan.dcm", rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    write_png_atomic(inputs / "huge.png", rng.integers(0, 255, (2000, 3000), dtype=np.uint8))
    write_png_atomic(inputs / "odd.png", rng.integers(0, 255, (37, 53), dtype=np.uint8))
    (inputs / "zero.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("hello")
    full = (inputs / "plain.png").read_bytes()
    (inputs / "cut.png").write_bytes(full[: len(full) // 2])

    report = predict_folder(
        PredictConfig(
            model=str(trained_run),
            input_dir=str(inputs),
            output_dir=str(tmp_path / "out"),
            tile_size=512,
        )
    )
    rows = report.set_index("input")
    assert set(rows[rows["status"] == "error"].index) == {"zero.png", "notes.txt", "cut.png"}
    sizes = {
        "plain.png": (40, 60),
        "deep.tif": (33, 47),
        "photo.jpg": (50, 30),
        "scan.dcm": (64, 64),
        "huge.png": (2000, 3000),
        "odd.png": (37, 53),
    }
    for name, size in sizes.items():
        assert rows.loc[name, "status"] == "ok", name
        assert np.asarray(Image.open(tmp_path / "out" / rows.loc[name, "mask"])).shape == size


def test_flip_tta_is_flip_equivariant(trained_run):
    from unet.inference.segmenter import Segmenter

    image = Segmenter(trained_run).prepare(
        np.random.default_rng(5).integers(0, 255, (36, 52), dtype=np.uint8)
    )
    plain, tta = Segmenter(trained_run), Segmenter(trained_run, tta=True)
    with_tta = tta.predict_probabilities([image])[0]
    flipped = tta.predict_probabilities([np.ascontiguousarray(image[:, ::-1])])[0]
    np.testing.assert_allclose(flipped[:, ::-1], with_tta, atol=1e-5)
    assert not np.allclose(plain.predict_probabilities([image])[0], with_tta, atol=1e-5)


def test_video_gives_a_mask_video_and_per_frame_rows(trained_run, tmp_path):
    import cv2

    inputs = tmp_path / "in"
    inputs.mkdir()
    writer = cv2.VideoWriter(
        str(inputs / "cine.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (40, 24), isColor=True
    )
    rng = np.random.default_rng(8)
    for _ in range(7):
        grey = rng.integers(0, 255, (24, 40), dtype=np.uint8)
        writer.write(np.repeat(grey[..., None], 3, axis=2))
    writer.release()
    (inputs / "broken.mp4").write_bytes(b"not a video")

    report = predict_folder(
        PredictConfig(
            model=str(trained_run),
            input_dir=str(inputs),
            output_dir=str(tmp_path / "out"),
            batch_size=3,
            mask_values="255",
        )
    )
    rows = report.set_index("input")
    assert rows.loc["broken.mp4", "status"] == "error"
    assert rows.loc["cine.avi", "status"] == "ok"
    assert (rows.loc["cine.avi", "height"], rows.loc["cine.avi", "width"]) == (24, 40)
    frames = pd.read_csv(tmp_path / "out" / "cine.mask.frames.csv")
    assert frames["frame"].tolist() == list(range(7))
    capture = cv2.VideoCapture(str(tmp_path / "out" / rows.loc["cine.avi", "mask"]))
    masks = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        masks.append(frame[..., 0])
    assert len(masks) == 7 and masks[0].shape == (24, 40)
    assert set(np.unique(np.stack(masks))) <= {0, 255}
    fractions = [float(np.mean(mask > 0)) for mask in masks]
    np.testing.assert_allclose(fractions, frames["foreground_fraction"], atol=1e-9)


def _predict(run, inputs, out, **options):
    """predict_folder with the test's model and folders."""
    config = PredictConfig(model=str(run), input_dir=str(inputs), output_dir=str(out), **options)
    return predict_folder(config)


def _write_video(path, frames=5, size=(24, 40)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, size[::-1], True)
    rng = np.random.default_rng(9)
    for _ in range(frames):
        grey = rng.integers(0, 255, size, dtype=np.uint8)
        writer.write(np.repeat(grey[..., None], 3, axis=2))
    writer.release()


def test_a_failing_video_is_an_error_row_and_leaves_no_temporary_file(
    trained_run, tmp_path, monkeypatch
):
    from unet.inference.segmenter import Segmenter

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _write_video(inputs / "cine.avi")
    write_png_atomic(inputs / "still.png", np.zeros((32, 32), np.uint8))
    out.mkdir()
    stale = out / ".cine.mask.tmp.avi"  # what a killed run of an older segflow left
    stale.write_bytes(b"half a video")
    original = Segmenter.segment

    def fail_on_frames(self, images):
        if images[0].shape[:2] == (24, 40):
            raise RuntimeError("out of memory on the device")
        return original(self, images)

    monkeypatch.setattr(Segmenter, "segment", fail_on_frames)
    report = _predict(trained_run, inputs, out).set_index("input")
    assert report.loc["cine.avi", "status"] == "error"
    assert "out of memory on the device" in report.loc["cine.avi", "error"]
    assert report.loc["still.png", "status"] == "ok"
    assert not stale.exists()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_the_journal_is_written_from_one_thread(trained_run, tmp_path, monkeypatch):
    import json
    import threading

    import unet.prediction.sink as prediction

    writers = set()

    class RecordingJson:
        def __getattr__(self, name):
            return getattr(json, name)

        def dumps(self, value, *args, **kwargs):
            if isinstance(value, dict) and "mask_scale" in value:
                writers.add(threading.get_ident())
            return json.dumps(value, *args, **kwargs)

    monkeypatch.setattr(prediction, "json", RecordingJson())
    inputs = tmp_path / "in"
    for index in range(6):
        write_png_atomic(inputs / f"{index}.png", np.full((32, 32), index * 40, np.uint8))
    report = _predict(trained_run, inputs, tmp_path / "out", batch_size=2)
    assert (report["status"] == "ok").all()
    assert writers == {threading.get_ident()}
    journal = (tmp_path / "out" / ".segflow-journal.jsonl").read_text().splitlines()
    assert len(journal) == 6


def test_each_prediction_error_is_logged_once(trained_run, tmp_path):
    from tasks.prediction import segment_folder
    from tests.conftest import LogCapture

    inputs = tmp_path / "in"
    write_png_atomic(inputs / "fine.png", np.zeros((32, 32), np.uint8))
    (inputs / "zero-bytes.png").write_bytes(b"")
    config = PredictConfig(
        model=str(trained_run), input_dir=str(inputs), output_dir=str(tmp_path / "out")
    )
    with LogCapture() as logs:
        summary = segment_folder.fn(config)
    assert summary.num_errors == 1
    assert len(logs.mentioning("zero-bytes.png")) == 1, logs.mentioning("zero-bytes.png")


def test_evaluation_tiles_large_images_as_prediction_does(trained_run, tmp_path):
    """Evaluation and prediction share one path: a large image scored by evaluate_cases gets
    the mask prediction writes for it."""
    from unet.evaluation.scoring import evaluate_cases
    from unet.inference.segmenter import Segmenter

    image = np.random.default_rng(4).integers(0, 255, (70, 90), dtype=np.uint8)
    write_png_atomic(tmp_path / "in" / "big.png", image)
    _predict(trained_run, tmp_path / "in", tmp_path / "out", tile_size=32, mask_values="index")
    predicted = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    segmenter = Segmenter(trained_run, tile_size=32)
    (result,) = segmenter.segment([segmenter.prepare(image)])
    assert np.array_equal(result.classes, predicted)
    evaluate_cases(segmenter, [Case("big", image, predicted)], tmp_path / "eval")
    scores = pd.read_csv(tmp_path / "eval" / "per_image.csv")
    assert scores.loc[0, "dice_0"] == 1.0 and scores.loc[0, "dice_1"] == 1.0


def test_binary_masks_are_visible_by_default_and_indices_on_request(threshold_model, tmp_path):
    image = np.zeros((16, 16), np.uint8)
    image[4:9, 4:9] = 255
    write_png_atomic(tmp_path / "in" / "a.png", image)
    _predict(threshold_model, tmp_path / "in", tmp_path / "default", precision="float32")
    visible = np.asarray(Image.open(tmp_path / "default" / "a.png"))
    assert set(np.unique(visible)) == {0, 255} and np.count_nonzero(visible) == 25
    _predict(threshold_model, tmp_path / "in", tmp_path / "index", mask_values="index")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "index" / "a.png")), visible // 255)
    old = PredictConfig(input_dir="in", output_dir="out", binary_255=False)  # an old config
    assert old.mask_values == "index"


def test_the_training_masks_beside_the_scans_are_not_inputs(threshold_model, tmp_path, caplog):
    import json
    import logging
    import shutil

    model = tmp_path / "model"
    shutil.copytree(threshold_model, model)
    (model / "lineage.json").write_text(json.dumps({"prepare_config": {"mask_suffix": "_mask"}}))
    image = np.zeros((16, 16), np.uint8)
    for name in ("a.png", "a_mask.png", "a_mask_2.png", "b.png", "roi/b_roi.png", "c.tif"):
        write_png_atomic(tmp_path / "in" / name, image)
    with caplog.at_level(logging.INFO, logger="unet.prediction.selection"):
        report = _predict(model, tmp_path / "in", tmp_path / "out")
    assert sorted(report["input"]) == ["a.png", "b.png", "c.tif", "roi/b_roi.png"]
    assert "2 files left out of the inputs: excluded *_mask.* *_mask_*" in caplog.text
    plans = []
    predict_folder(
        PredictConfig(
            model=str(model), input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "o4")
        ),
        on_plan=plans.append,
    )
    assert plans[0].left_out.startswith(
        "2 files left out (excluded *_mask.* *_mask_* (the training"
    )
    chosen = _predict(
        model, tmp_path / "in", tmp_path / "o2", include=["*.png"], exclude=["*_roi*"]
    )
    assert sorted(chosen["input"]) == ["a.png", "a_mask.png", "a_mask_2.png", "b.png"]
    everything = _predict(model, tmp_path / "in", tmp_path / "o3", exclude=[""])
    assert len(everything) == 6


def test_a_model_trained_on_coloured_scans_as_grey_reads_them_so_at_prediction(
    threshold_model, tmp_path
):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(threshold_model, model)
    (model / "lineage.json").write_text(json.dumps({"prepare_config": {"colour_input": "grey"}}))
    grey = np.zeros((16, 16), np.uint8)
    grey[4:9, 4:9] = 255
    marked = np.repeat(grey[:, :, None], 3, axis=2)
    marked[0, 0:3] = (255, 255, 0)  # a yellow caliper burnt in
    write_png_atomic(tmp_path / "in" / "marked.png", marked)
    report = _predict(model, tmp_path / "in", tmp_path / "out").set_index("input")
    assert report.loc["marked.png", "status"] == "ok"
    assert "colour_converted" in report.loc["marked.png", "review_reasons"]
    refused = _predict(model, tmp_path / "in", tmp_path / "o2", colour_input="error")
    assert refused.iloc[0]["status"] == "error"
    assert "--colour-input grey" in refused.iloc[0]["error"]


def test_a_scan_missing_a_sequence_is_flagged_for_review_by_a_model_of_sequences(tmp_path):
    import keras

    from tests.unet.conftest import save_stand_in

    image = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(2, 1, name="head_conv")(image)
    model = keras.Model(image, keras.layers.Activation("softmax", dtype="float32")(logits))
    rng = np.random.default_rng(0)
    scan = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    missing = scan.copy()
    missing[..., 2] = missing[..., 1]  # post-contrast missing, FLAIR copied into its channel
    write_png_atomic(tmp_path / "in" / "scan.png", scan)
    write_png_atomic(tmp_path / "in" / "missing.png", missing)
    write_png_atomic(tmp_path / "in" / "grey.png", np.repeat(scan[..., :1], 3, axis=2))
    for name, substitution in (("mr", 0.2), ("colour", 0.0)):
        folder = tmp_path / name
        folder.mkdir()
        save_stand_in(
            model, folder, name, channels=3, train_config={"channel_substitution": substitution}
        )
    report = _predict(tmp_path / "mr", tmp_path / "in", tmp_path / "out").set_index("input")
    assert (report["status"] == "ok").all()
    assert report.loc["missing.png", "review"] == "review"
    assert "channel_3_copies_2" in report.loc["missing.png", "review_reasons"]
    assert "copies" not in str(report.loc["scan.png", "review_reasons"])
    grey = str(report.loc["grey.png", "review_reasons"])
    assert "channel_2_copies_1" in grey and "channel_3_copies_1" in grey
    colour = _predict(tmp_path / "colour", tmp_path / "in", tmp_path / "o2")  # RGB: no flag
    assert not colour["review_reasons"].fillna("").str.contains("copies").any()
