"""Nothing bad gets through: every bad input in tests/bad_inputs/ ends with one short message, the right exit code and no
run left RUNNING in the store.

Each experiment file (files named ``stream_*`` are the streams they use) starts with comment lines:
``# expect:`` text of the message, ``# key:`` its key path, ``# exit:`` the exit code (default 2),
``# command:`` ``validate`` (default) or ``run`` plus arguments, ``# setup:`` a fault prepared in the
working folder, ``# file:`` the file the message must name (default: the case itself) and
``# needs:`` a condition of the machine.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from cl_harness.cli import main

FOLDER = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p for p in FOLDER.glob("*.yaml") if not p.name.startswith("stream_"))
MAX_MESSAGE_CHARS = 1000  # the whole of stderr
MAX_MESSAGE_LINES = 4


def header(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# ") and ": " in line:
            name, value = line[2:].split(": ", 1)
            found[name] = value
    return found


def _db_with(path: Path, content: bytes) -> None:
    path.mkdir(exist_ok=True)
    (path / "mlflow.db").write_bytes(content)


SETUPS = {
    "mlruns_is_file": lambda work, inputs: (work / "mlruns").write_text("not a folder\n"),
    "db_not_sqlite": lambda work, inputs: _db_with(work / "mlruns", b"this is not a database\n" * 50),
    "db_damaged": lambda work, inputs: _db_with(work / "mlruns", b"SQLite format 3\x00" + bytes(range(256)) * 32),
    "db_is_folder": lambda work, inputs: (work / "mlruns" / "mlflow.db").mkdir(parents=True),
    "blocker_file": lambda work, inputs: (work / "blocker").write_text("a file where a folder is needed\n"),
    "big_data_file": lambda work, inputs: (inputs / "data" / "big.jsonl").write_text(
        "".join(json.dumps({"text": f"row {i} " + "word " * 40, "label": "a"}) + "\n" for i in range(12_000))
    ),
}


def running_runs(work: Path) -> int:
    """Runs left RUNNING in any readable SQLite store under ``work``."""
    count = 0
    for db in work.rglob("*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
                count += connection.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        except sqlite3.DatabaseError:
            continue  # a damaged store set up by the case, or one without tables
    return count


@pytest.fixture
def workplace(tmp_path, tiny_bert, monkeypatch):
    """A copy of tests/bad_inputs and an empty working folder (cwd) for runs/ and mlruns/."""
    inputs = tmp_path / "inputs"
    shutil.copytree(FOLDER, inputs)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TINY_BERT", str(tiny_bert))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))  # the test plugins
    return SimpleNamespace(inputs=inputs, work=work)


def test_the_folder_holds_the_cases():
    assert len(CASES) >= 60
    names = {p.stem for p in CASES}
    for family in ("seed", "lr", "device", "max_length", "plugin", "duplicate", "billion", "nesting", "uri", "store",
                   "checkpoint_dir", "name", "labels", "texts", "object_file", "echo"):
        assert any(family in name for name in names), family


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_bad_input_is_refused_with_one_short_message(case, workplace, capsys):
    expected = header(case)
    needs = expected.get("needs")
    if needs == "no-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    elif needs and needs.startswith("/") and not Path(needs).exists():
        pytest.skip(f"{needs} does not exist here")
    if "setup" in expected:
        SETUPS[expected["setup"]](workplace.work, workplace.inputs)
    path = workplace.inputs / case.name
    command, *extra = expected.get("command", "validate").split()
    argv = [command, str(path), *(["--no-progress"] if command == "run" else []), *extra]

    code = main(argv)

    err = capsys.readouterr().err
    assert code == int(expected.get("exit", 2)), err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert expected["expect"] in err, err
    if "key" in expected:
        assert f" {expected['key']}: " in err, err
    if "file" in expected:
        assert expected["file"] in err, err
    elif code == 2 and not expected.get("key", "").startswith("-"):
        assert path.name in err, err
    assert len(err) <= MAX_MESSAGE_CHARS and err.count("\n") <= MAX_MESSAGE_LINES, err
    assert running_runs(workplace.work) == 0


@pytest.mark.parametrize("case", ["echo_etc_passwd", "echo_data_file", "label_names_file_is_passwd", "missing_field_long_rows"])
def test_a_message_never_echoes_a_users_file(case, workplace, capsys):
    """No 100-character piece of the file a path points at appears in the message."""
    expected = header(FOLDER / f"{case}.yaml")
    target = Path("/etc/passwd") if "passwd" in case else workplace.inputs / "data" / "long_lines.jsonl"
    if not target.exists():
        pytest.skip(f"{target} does not exist here")
    assert main(["validate", str(workplace.inputs / f"{case}.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected["expect"] in err
    text = target.read_text(errors="replace")
    pieces = [text[i : i + 100] for i in range(0, max(len(text) - 100, 1), 50)]
    assert not any(piece in err for piece in pieces if len(piece) == 100), err


def _check_stream(workplace, stream_name: str, *replace: tuple[str, str]):
    from cl_harness.grid.prepare import check_stream

    path = workplace.inputs / stream_name
    text = path.read_text()
    for old, new in replace:
        text = text.replace(old, new)
    path.write_text(text)
    return check_stream(path)


def test_integer_labels_that_are_the_names_map_by_value(workplace):
    """Ratings 1..5 named "1".."5": rating 1 is class "1" (not "2"), and no 5 is dropped."""
    (workplace.inputs / "stream_ratings.yaml").write_text(
        "name: s\nscenario: class_incremental\ntasks:\n"
        "  - name: a\n    source: {type: files, train_file: data/ratings_train.jsonl, test_file: data/ratings_test.jsonl}\n"
        "    label_names: ['1', '2', '3', '4', '5']\n    drop_unknown_labels: true\n"
        "  - name: b\n    source: {type: demo, seed: 1}\n    classes: [music, weather]\n"
    )
    checked = _check_stream(workplace, "stream_ratings.yaml")
    task = checked.tasks[0]
    assert task.label_names == ["1", "2", "3", "4", "5"]
    stars = [int(text.rsplit(" ", 1)[1]) for text in task.train_texts]
    assert [task.label_names[label] for label in task.train_labels] == [str(s) for s in stars]
    assert len(task.train_labels) == 15 and len(task.test_labels) == 10


def test_integer_labels_that_are_not_names_stay_indices(workplace):
    """Labels 0/1 with names [sports, cooking] are indices, as before."""
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(8)]
    (workplace.inputs / "data" / "indices.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (workplace.inputs / "stream_indices.yaml").write_text(
        "name: s\nscenario: class_incremental\ntasks:\n"
        "  - name: a\n    source: {type: files, train_file: data/indices.jsonl}\n    label_names: [sports, cooking]\n"
        "  - name: b\n    source: {type: demo, seed: 1}\n    classes: [music, weather]\n"
    )
    task = _check_stream(workplace, "stream_indices.yaml").tasks[0]
    assert sorted(set(task.train_labels) | set(task.test_labels)) == [0, 1]


def test_test_only_labels_are_accepted_with_the_explicit_key(workplace):
    checked = _check_stream(workplace, "stream_test_only_label.yaml",
                            ("test_file: data/three_labels_test.jsonl}", "test_file: data/three_labels_test.jsonl}\n    allow_test_only_labels: true"))
    task = checked.tasks[0]
    assert task.label_names == ["cooking", "music", "sports"]
    assert task.label_names.index("music") in task.test_labels and task.label_names.index("music") not in task.train_labels


def test_blank_texts_are_dropped_with_the_explicit_key(workplace):
    checked = _check_stream(workplace, "stream_blank_texts.yaml",
                            ("test_file: data/ok_test.jsonl}", "test_file: data/ok_test.jsonl}\n    drop_empty_texts: true"))
    task = checked.tasks[0]
    assert len(task.train_texts) == 5 and all(text.strip() for text in task.train_texts)


def test_task_names_in_non_latin_scripts_get_distinct_metric_keys():
    from cl_harness.tracking.schema import metric_key

    names = ["Задача", "Задание", "Тест", "任务一", "任务二", "タスク", "مهمة", "café", "naïve task"]
    keys = [metric_key(f"acc/{name}") for name in names]
    assert len(set(keys)) == len(keys), keys
    assert keys[-2:] == ["acc/cafe", "acc/naive task"]  # accents are transliterated, nothing appended
    assert metric_key("acc/Задача") == keys[0]  # stable
    assert all(key.startswith("acc/") and "/" not in key[4:] for key in keys)


def test_a_stream_of_non_latin_task_names_validates(workplace, capsys):
    (workplace.inputs / "stream_cyrillic.yaml").write_text(
        "name: s\nscenario: class_incremental\ntasks:\n"
        "  - name: Задача\n    source: {type: demo, train_examples_per_class: 4, test_examples_per_class: 2}\n    classes: [sports, cooking]\n"
        "  - name: Задание\n    source: {type: demo, seed: 1, train_examples_per_class: 4, test_examples_per_class: 2}\n    classes: [music, weather]\n",
        encoding="utf-8",
    )
    experiment = workplace.inputs / "cyrillic.yaml"
    experiment.write_text("name: ok\nstream: stream_cyrillic.yaml\nbackbone: ${TINY_BERT}\ntraining: {max_length: 24}\n")
    assert main(["validate", str(experiment)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", ".", "../../escape", "/abs/path", "a/../../b"])
def test_run_folders_stay_inside_checkpoint_dir(name, workplace):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.experiment import grid_folder, run_folder
    from cl_harness.grid.prepare import check_experiment

    experiment = workplace.inputs / "dots.yaml"
    experiment.write_text(f"name: '{name}'\nstream: stream_ok.yaml\nbackbone: ${{TINY_BERT}}\ntraining: {{max_length: 24}}\n"
                          "checkpoint_dir: runs\n")
    checked = check_experiment(load_experiment(experiment))
    root = (workplace.work / "runs").resolve()
    grid = grid_folder(SimpleNamespace(checked=checked, config=checked.config))
    assert grid.resolve().parent.parent == root
    for planned in checked.runs:
        assert run_folder(grid, planned).resolve().parent == grid.resolve()
