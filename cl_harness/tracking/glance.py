"""What makes a grid readable in the MLflow UI: run descriptions, the report's location and a shared runs-table view."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from cl_harness.tracking.links import artifact_url

from cl_harness.tracking.schema import NOTE_TAG, SHARED_VIEW_TAG_PREFIX
from cl_harness.tracking.schema import REPORT_HTML_ARTIFACT as REPORT_ARTIFACT
from cl_harness.tracking.store import retry_if_raced


def note(markdown: str) -> dict[str, str]:
    """The tag that sets a run's description, cut to MLflow's tag-length limit."""
    if len(markdown) > MAX_TAG_VAL_LENGTH:
        markdown = markdown[: MAX_TAG_VAL_LENGTH - 40] + "\n\n(cut: see report.html)\n"
    return {NOTE_TAG: markdown}


def metric_column(key: str) -> str:
    """The runs table's column id of a metric, as the MLflow UI names it."""
    return f"metrics.`{key}`"


RUN_NAME_COLUMN = "attributes.`Run Name`"
FIXED_COLUMNS = ("runDateAndNestInfo", "duration")  # the UI's Created and Duration columns
RUN_NAME_WIDTH_PX = 280  # wide enough for `<strategy>/seed<k>/order<m>`


def view_state(metric_keys: Sequence[str]) -> dict:
    """A runs-table view: full run names, then ``metric_keys`` as columns."""
    metrics = [metric_column(k) for k in metric_keys]
    return {
        "selectedColumns": metrics,
        "columnOrder": [RUN_NAME_COLUMN, *FIXED_COLUMNS, *metrics],
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH_PX},
    }


def share_view(client: MlflowClient, experiment_id: str, key: str, metric_keys: Sequence[str]) -> str:
    """Store a runs-table view showing ``metric_keys`` as columns, under ``key``; returns the key."""
    value = json.dumps(view_state(metric_keys))
    retry_if_raced(lambda: client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG_PREFIX + key, value))
    return key


def report_location(client: MlflowClient, ui_base: str, experiment_id: str, run_id: str) -> str:
    """Where a user opens the run's report.html: the local file for a local artifact store, else its UI page."""
    root = client.get_run(run_id).info.artifact_uri or ""
    parts = urlparse(root)
    if parts.scheme == "file" or (not parts.scheme and root):
        return str(Path(unquote(parts.path)) / REPORT_ARTIFACT)
    return artifact_url(ui_base, experiment_id, run_id, REPORT_ARTIFACT)
