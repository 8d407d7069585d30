"""Segmenting every scan in a folder: one mask per input and a report row per input.

A short pipeline of named stages, one module each: :mod:`~unet.prediction.plan` (list the
inputs, decide every output name for the whole run and check it, read the journal) ->
:mod:`~unet.prediction.reading` (reader threads hash and decode ahead of the model, yielding
:class:`~unet.prediction.records.LoadedInput` records whose ``kind`` says image, video, volume,
skipped or error) -> :mod:`~unet.prediction.stream` (same-shape batches, sliding window for
large images, :mod:`~unet.prediction.video` frame by frame, :mod:`~unet.prediction.volumes`
slice by slice, all through :meth:`Segmenter.segment`) -> :mod:`~unet.prediction.sink` (owns the
report rows, the journal and the mask-writing thread; every exit closes the journal) ->
:mod:`~unet.prediction.run` (``report.csv``) and :mod:`~unet.prediction.review` (the page).

Resumable: every finished input is appended to ``.segflow-journal.jsonl`` in the output folder
after its mask is in place. Run again (after a crash or ``kill -9``), inputs whose mask exists
for the same model version, input hash and output options are ``skipped`` and keep their row;
the report always ends with exactly one row per input.

Masks mirror the input's relative path under the output folder with a ``.png`` suffix (when two
inputs in one folder share a stem, ``name.ext.png``), have exactly the input's height and width,
and are written atomically, never outside the output folder. A file that cannot be read or
segmented becomes an ``error`` row naming the reason; the run goes on.
"""

from unet.prediction.plan import JOURNAL_FILE, PAGE_FILE, REPORT_FILE
from unet.prediction.reading import prefetch
from unet.prediction.records import REPORT_COLUMNS
from unet.prediction.run import predict_folder, segment_files, write_report

__all__ = [
    "JOURNAL_FILE",
    "PAGE_FILE",
    "REPORT_COLUMNS",
    "REPORT_FILE",
    "predict_folder",
    "prefetch",
    "segment_files",
    "write_report",
]
