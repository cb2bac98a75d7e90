"""The end of a grid: the parent run gets the answer (summary metrics, description, report) and is closed."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import pandas as pd

from cl_harness.report.compare import load_comparison, terms_acted
from cl_harness.report.glance import VIEW_COLUMNS, compact_table, parent_description, summary_metrics
from cl_harness.report.html import log_report
from cl_harness.tracking.glance import note, report_location, share_view
from cl_harness.tracking.links import (
    artifact_path,
    experiment_url,
    run_url,
    store_serves_ui,
    ui_base_url,
)
from cl_harness.tracking.schema import EQUALS_NAIVE_TAG, FAILED, FINISHED, PENALTY_SHARE_METRIC, REPORT_HTML_ARTIFACT, summary_key
from cl_harness.tracking.writer import RunLogger, log_grid_counts, tag_run

MAX_VIEW_STRATEGIES = 8  # the parent's summary/acc/<strategy> columns in the shared runs-table view


@dataclass
class GridGlance:
    """What `cl-harness run` prints last: the compact table, the report and deep links into the MLflow UI."""

    table: pd.DataFrame
    report: str
    parent_url: str
    experiment_url: str
    store_serves_ui: bool

    def closing_text(self) -> str:
        how = "" if self.store_serves_ui else "  (serve it with: cl-harness ui)"
        return "\n".join([
            "", compact_table(self.table), "",
            f"report:     {self.report}",
            f"parent run: {self.parent_url}{how}",
            f"all runs:   {self.experiment_url}",
        ])


def finish_grid(client, parent: RunLogger, experiment_name: str, results: list) -> GridGlance:
    """Summary metrics and the markdown table on the parent, the parent closed, then the report regenerated and logged.

    The report is written after the parent is marked ended, so that it shows the final status.
    """
    log_grid_counts(parent, sum(r.status == FINISHED for r in results), len(results))
    comparison = load_comparison(client, experiment_name, parent.run_id)
    for run in comparison.equal_to_naive():
        if terms_acted(run):  # not inert: the test sets did not show what the terms changed
            why = (f"; its loss terms reached {run.metrics[PENALTY_SHARE_METRIC]:.1%} of the loss, so training changed but no test "
                   "prediction did (more test examples per task may show the difference)")
        else:
            why = f"; {run.strength_hint}" if run.strength_hint else ""
        tag_run(client, run.run_id, {EQUALS_NAIVE_TAG: f"accuracy matrix equal to naive's at the same seed and order{why}"})
    table = comparison.table()
    experiment_id = comparison.experiment_id
    parent.log_final(summary_metrics(table))
    parent.set_tags(note(parent_description(comparison, artifact_path(experiment_id, parent.run_id, REPORT_HTML_ARTIFACT))))
    parent_columns = [summary_key("acc", str(name)) for name in table["strategy"][:MAX_VIEW_STRATEGIES]]
    share_key = share_view(client, experiment_id, f"cl-harness-{parent.run_id}", [*VIEW_COLUMNS, *parent_columns])
    status = FINISHED if all(r.status == FINISHED for r in results) else FAILED
    parent.end(status)
    comparison.parent_status = client.get_run(parent.run_id).info.status
    with tempfile.TemporaryDirectory() as tmp:
        log_report(client, parent.run_id, comparison, tmp)
    base = ui_base_url(comparison.tracking_uri)
    return GridGlance(
        table, report_location(client, base, experiment_id, parent.run_id), run_url(base, experiment_id, parent.run_id),
        experiment_url(base, experiment_id, share_key), store_serves_ui(comparison.tracking_uri),
    )
