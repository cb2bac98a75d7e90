"""Tests of the data layer: sources (files, saved, hub, demo), task cutting rules and the shared benchmark data."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cl_harness.config.loader import LoadedStream, load_stream
from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows
from cl_harness.data.tasks import TaskData, load_stream_tasks, load_task
from cl_harness.errors import ConfigError

FILLER = {"name": "filler", "source": {"type": "demo", "train_examples_per_class": 2, "test_examples_per_class": 1}}

ROWS = [
    {"text": "the team won the match", "label": "sports"},
    {"text": "stir the soup slowly", "label": "cooking"},
    {"text": "a comet crossed the sky", "label": "space"},
    {"text": "the referee blew the whistle", "label": "sports"},
    {"text": "bake the bread for an hour", "label": "cooking"},
    {"text": "the telescope found a galaxy", "label": "space"},
]


def benchmark_dir() -> Path:
    """The shared cl_benchmark directory (env CL_BENCHMARK_DIR overrides)."""
    default = Path(__file__).resolve().parents[2] / "shared/data/cl_benchmark"
    return Path(os.environ.get("CL_BENCHMARK_DIR", default))


@pytest.fixture
def bench() -> Path:
    path = benchmark_dir()
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set CL_BENCHMARK_DIR)")
    return path


def make_stream(directory: Path, tasks: list[dict], scenario: str = "task_incremental", variables=None) -> LoadedStream:
    """Write a stream YAML with ``tasks`` (plus a filler task when only one) and load it."""
    tasks = tasks if len(tasks) >= 2 else tasks + [FILLER]
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "scenario": scenario, "tasks": tasks}, sort_keys=False))
    return load_stream(path, variables or {})


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def files_task(train="train.json", test="test.json", **extra) -> dict:
    source = {"type": "files"}
    if train:
        source["train_file"] = train
    if test:
        source["test_file"] = test
    return {"name": "t", "source": source, **extra}


def one_task(tmp_path: Path, task: dict, scenario: str = "task_incremental") -> TaskData:
    return load_task(make_stream(tmp_path, [task], scenario), 0)


def config_error(tmp_path: Path, task: dict, scenario: str = "task_incremental") -> ConfigError:
    """The ConfigError that loading ``task`` raises; checks it points at the stream file."""
    stream = make_stream(tmp_path, [task], scenario)
    with pytest.raises(ConfigError) as info:
        load_task(stream, 0)
    err = info.value
    assert err.file == str(stream.path) and err.line is not None
    assert err.key and err.key.startswith("tasks[0]")
    return err


# -- sources ---------------------------------------------------------------------------------------


def test_files_json_array(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    write_json(tmp_path / "test.json", ROWS[:3])
    task = one_task(tmp_path, files_task())
    assert task.label_names == ["cooking", "space", "sports"]  # inferred: sorted unique
    assert task.train_texts == [r["text"] for r in ROWS]
    assert task.train_labels == [2, 0, 1, 2, 0, 1]
    assert task.test_labels == [2, 0, 1]


def test_files_jsonl_and_json_lines_in_dot_json(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.json", ROWS[3:])  # JSON lines in a .json file
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text() + "\n\n")  # blank lines are skipped
    task = one_task(tmp_path, files_task("train.jsonl", "test.json"))
    assert len(task.train_texts) == 6 and len(task.test_texts) == 3
    assert task.test_texts[0] == "the referee blew the whistle"


def test_files_csv_with_int_labels(tmp_path):
    lines = ["text,label", '"hello, world",0', "good day,1", '"multi\nline",1', "007,0"]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.csv").write_text("text,label\nbye,0\nsee you,1\n")
    task = one_task(tmp_path, files_task("train.csv", "test.csv", label_names=["neg", "pos"]))
    assert task.label_names == ["neg", "pos"]
    assert task.train_texts == ["hello, world", "good day", "multi\nline", "007"]
    assert task.train_labels == [0, 1, 1, 0]
    assert task.test_labels == [0, 1]


def test_files_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS], "extra": list(range(6))})
    pq.write_table(table, tmp_path / "train.parquet")
    task = one_task(tmp_path, files_task("train.parquet", None, test_fraction=0.5))
    assert task.label_names == ["cooking", "space", "sports"]
    assert len(task.train_texts) == 3 and len(task.test_texts) == 3
    assert sorted(task.test_labels) == [0, 1, 2]  # one of each class held out


def test_saved_dataset_dict_uses_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    data = {"text": ["bad", "good", "awful", "great"], "label": [0, 1, 0, 1]}
    dsd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data, features=features), "validation": datasets.Dataset.from_dict(
            {"text": ["meh", "nice"], "label": [0, 1]}, features=features)}
    )
    dsd.save_to_disk(str(tmp_path / "saved"))
    task = one_task(tmp_path, {"name": "t", "source": {"type": "saved", "path": "saved", "test_split": "validation"}})
    assert task.label_names == ["neg", "pos"]
    assert task.train_texts == ["bad", "good", "awful", "great"] and task.train_labels == [0, 1, 0, 1]
    assert task.test_texts == ["meh", "nice"] and task.test_labels == [0, 1]


def test_saved_plain_dataset_is_train_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS * 5).save_to_disk(str(tmp_path / "saved"))
    task = one_task(tmp_path, {"name": "t", "source": {"type": "saved", "path": "saved"}})
    assert len(task.train_texts) + len(task.test_texts) == 30
    assert Counter(task.test_labels) == {0: 2, 1: 2, 2: 2}  # 20% of 10 per class


def test_saved_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "notadataset").mkdir()
    err = config_error(tmp_path, {"name": "t", "source": {"type": "saved", "path": "notadataset"}})
    assert err.key == "tasks[0].source.path" and "not a dataset directory" in err.message
    err = config_error(tmp_path, {"name": "t", "source": {"type": "saved", "path": "missing"}})
    assert "not found" in err.message and "missing" in err.message
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    err = config_error(tmp_path, {"name": "t", "source": {"type": "saved", "path": "dd"}})
    assert err.key == "tasks[0].source.test_split" and "no split 'test'" in err.message and "train" in err.message
    task = one_task(tmp_path, {"name": "t", "source": {"type": "saved", "path": "dd", "test_split": None}})
    assert len(task.train_texts) + len(task.test_texts) == 6


def test_saved_plain_dataset_without_train_split_has_no_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    err = config_error(tmp_path, {"name": "t", "source": {"type": "saved", "path": "saved", "train_split": None}})
    assert "neither a train nor a test split" in err.message


def test_hub_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    task = {"name": "t", "source": {"type": "hub", "name": "no-such-owner/no-such-dataset-cl-harness"}}
    err = config_error(tmp_path, task)
    assert err.key == "tasks[0].source.name"
    assert "could not load hub dataset 'no-such-owner/no-such-dataset-cl-harness'" in err.message
    assert "type: files" in err.hint and "train_file" in err.hint


def test_demo_rows_deterministic_and_well_formed():
    rows = generate_demo_rows(DEMO_LABELS, 40, seed=3, split="train")
    assert rows == generate_demo_rows(DEMO_LABELS, 40, seed=3, split="train")
    assert rows != generate_demo_rows(DEMO_LABELS, 40, seed=4, split="train")
    test = generate_demo_rows(DEMO_LABELS, 40, seed=3, split="test")
    assert not {r["text"] for r in rows} & {r["text"] for r in test}
    assert len(DEMO_LABELS) == 8 and Counter(r["label"] for r in rows) == {label: 40 for label in DEMO_LABELS}
    assert all(10 <= len(r["text"].split()) <= 25 for r in rows + test)
    assert len({r["text"] for r in rows}) == len(rows)
    # a topic's sentences do not depend on which other topics are generated
    sports = [r["text"] for r in generate_demo_rows(["sports"], 40, seed=3, split="train")]
    assert sorted(sports) == sorted(r["text"] for r in rows if r["label"] == "sports")
    with pytest.raises(ValueError):
        generate_demo_rows(["gardening"], 1, 0, "train")


def test_demo_words_vary_within_a_topic():
    rows = generate_demo_rows(["music"], 150, seed=0, split="train")
    words = Counter(w.strip(".,").lower() for r in rows for w in set(r["text"].split()))
    assert max(count for word, count in words.items() if word not in {"the", "and", "about", "a"}) < 0.5 * len(rows)


def test_demo_source_with_classes(tmp_path):
    task = {
        "name": "d",
        "source": {"type": "demo", "seed": 1, "train_examples_per_class": 30, "test_examples_per_class": 10},
        "classes": ["music", "sports"],
    }
    stream = make_stream(tmp_path, [task, {**FILLER, "classes": ["weather", "travel"]}], "class_incremental")
    first, second = load_stream_tasks(stream)
    assert first.label_names == ["music", "sports"] and second.label_names == ["weather", "travel"]
    assert Counter(first.train_labels) == {0: 30, 1: 30} and Counter(first.test_labels) == {0: 10, 1: 10}
    assert load_task(stream, 0) == first


# -- cutting rules ---------------------------------------------------------------------------------


def test_label_names_from_relative_json_file_and_int_labels(tmp_path):
    (tmp_path / "data").mkdir()
    write_json(tmp_path / "data" / "labels.json", ["neg", "pos"])
    write_json(tmp_path / "data" / "train.json", [{"t": "a", "y": 1}, {"t": "b", "y": "neg"}])
    write_json(tmp_path / "data" / "test.json", [{"t": "c", "y": 0}, {"t": "d", "y": "pos"}])
    task = files_task("data/train.json", "data/test.json", text_field="t", label_field="y")
    data = one_task(tmp_path, {**task, "label_names": "data/labels.json"})
    assert data.label_names == ["neg", "pos"]
    assert data.train_labels == [1, 0] and data.test_labels == [0, 1]


def test_relative_paths_resolve_against_stream_dir(tmp_path, monkeypatch):
    write_json(tmp_path / "train.json", ROWS)
    write_json(tmp_path / "test.json", ROWS)
    stream = make_stream(tmp_path, [files_task()])
    monkeypatch.chdir(tmp_path.parent)
    assert len(load_task(stream, 0).train_texts) == 6


def test_bad_label_names_file(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    (tmp_path / "labels.json").write_text('["a", ')
    err = config_error(tmp_path, files_task(test=None, label_names="labels.json"))
    assert err.key == "tasks[0].label_names" and "labels.json" in err.message and "line 1" in err.message
    err = config_error(tmp_path, files_task(test=None, label_names="nope.json"))
    assert "not found" in err.message


def test_unknown_labels_error_then_dropped(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    write_json(tmp_path / "test.json", ROWS + [{"text": "??", "label": "-"}, {"text": "!!", "label": "-"}])
    task = files_task(label_names=["sports", "cooking", "space"])
    err = config_error(tmp_path, task)
    assert err.key == "tasks[0].label_names"
    assert "2 rows of the test split" in err.message and "test.json" in err.message
    assert "'-'" in err.message and "sports, cooking, space" in err.message
    assert "drop_unknown_labels: true" in err.hint
    data = one_task(tmp_path, {**task, "drop_unknown_labels": True})
    assert len(data.test_texts) == 6 and "??" not in data.test_texts


def test_int_label_out_of_range_is_unknown(tmp_path):
    write_json(tmp_path / "train.json", [{"text": "a", "label": 0}, {"text": "b", "label": 5}])
    err = config_error(tmp_path, files_task(test=None, label_names=["x", "y"]))
    assert "1 rows" in err.message and "5" in err.message


def test_missing_text_and_label_fields(tmp_path):
    write_json(tmp_path / "train.json", [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    err = config_error(tmp_path, files_task(test=None, text_field="sentense"))
    assert err.key == "tasks[0].text_field"
    assert "'sentense'" in err.message and "sentence, label" in err.message and "train.json" in err.message
    assert err.hint == "did you mean 'sentence'?"
    err = config_error(tmp_path, files_task(test=None, text_field="sentence", label_field="labels"))
    assert err.key == "tasks[0].label_field" and "did you mean 'label'?" in err.hint


def test_sentence_pairs(tmp_path):
    rows = [{"p": f"premise {i}", "h": f"hypothesis {i}", "label": i % 2} for i in range(10)]
    write_json(tmp_path / "train.json", rows)
    write_json(tmp_path / "test.json", rows[:4])
    data = one_task(tmp_path, files_task(text_field=["p", "h"], label_names=["no", "yes"]))
    assert data.train_texts[3] == ("premise 3", "hypothesis 3") and data.train_labels[3] == 1
    err = config_error(tmp_path, files_task(text_field=["p", "hyp"], label_names=["no", "yes"]))
    assert err.key == "tasks[0].text_field[1]"


def test_classes_subset_and_order(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    write_json(tmp_path / "test.json", ROWS)
    data = one_task(tmp_path, files_task(classes=["space", "sports"]))
    assert data.label_names == ["space", "sports"]
    assert data.train_texts == [ROWS[i]["text"] for i in (0, 2, 3, 5)]
    assert data.train_labels == [1, 0, 1, 0]
    err = config_error(tmp_path, files_task(classes=["space", "sport"]))
    assert err.key == "tasks[0].classes[1]" and err.hint == "did you mean 'sports'?"
    assert "cooking, space, sports" in err.message



def test_rename_labels_maps_tasks_onto_shared_units_with_the_same_examples(tmp_path):
    """A split domain-incremental stream: each task's classes renamed first/second share one 2-unit head."""
    from cl_harness.data.benchmark import LabelSpace

    def task(name, classes, rename=None):
        spec = {"name": name, "source": {"type": "demo", "seed": 1, "train_examples_per_class": 6,
                                         "test_examples_per_class": 3}, "classes": classes}
        return {**spec, "rename_labels": rename} if rename else spec

    plain = load_stream_tasks(make_stream(tmp_path, [task("a", ["music", "sports"]), task("b", ["weather", "travel"])],
                                          "class_incremental"))
    renamed = load_stream_tasks(make_stream(tmp_path, [
        task("a", ["music", "sports"], {"music": "first", "sports": "second"}),
        task("b", ["weather", "travel"], {"weather": "first", "travel": "second"}),
    ], "domain_incremental"))
    for before, after in zip(plain, renamed):
        assert after.label_names == ["first", "second"]
        assert (after.train_texts, after.train_labels, after.test_texts) == (before.train_texts, before.train_labels,
                                                                            before.test_texts)
    space = LabelSpace.build("domain_incremental", renamed)
    assert space.shared == ["first", "second"] and space.head_sizes == [2]
    assert space.targets(1, [0, 1]).tolist() == [0, 1]  # weather -> the unit music used

def balanced_rows(per_class: int, labels=("a", "b", "c")) -> list[dict]:
    return [{"text": f"{label} {i}", "label": label} for i in range(per_class) for label in labels]


def test_carve_test_from_train_is_stratified_and_seeded(tmp_path):
    write_json(tmp_path / "train.json", balanced_rows(50))
    task = files_task(test=None, test_fraction=0.2)
    first = one_task(tmp_path, task)
    again = one_task(tmp_path, task)
    assert first == again
    assert Counter(first.test_labels) == {0: 10, 1: 10, 2: 10} and Counter(first.train_labels) == {0: 40, 1: 40, 2: 40}
    assert not set(first.train_texts) & set(first.test_texts)
    other = one_task(tmp_path, {**task, "split_seed": 7})
    assert set(other.test_texts) != set(first.test_texts)
    # the carve of a class does not depend on which other classes are kept
    only_a = one_task(tmp_path, {**task, "classes": ["a", "b"]})
    assert [t for t in only_a.test_texts if t.startswith("a")] == [t for t in first.test_texts if t.startswith("a")]


def test_carve_train_from_test(tmp_path):
    write_json(tmp_path / "test.json", balanced_rows(10))
    data = one_task(tmp_path, files_task(train=None, test_fraction=0.3))
    assert Counter(data.test_labels) == {0: 3, 1: 3, 2: 3} and len(data.train_texts) == 21


def test_per_class_sampling(tmp_path):
    write_json(tmp_path / "train.json", balanced_rows(30))
    write_json(tmp_path / "test.json", balanced_rows(5, labels=("a", "b")) + balanced_rows(20, labels=("c",)))
    task = files_task(train_per_class=7, test_per_class=10)
    data = one_task(tmp_path, task)
    assert Counter(data.train_labels) == {0: 7, 1: 7, 2: 7}
    assert Counter(data.test_labels) == {0: 5, 1: 5, 2: 10}
    assert data == one_task(tmp_path, task)
    assert one_task(tmp_path, {**task, "split_seed": 1}).train_texts != data.train_texts
    indices = [int(t.split()[1]) for t in data.train_texts if t.startswith("a")]
    assert indices == sorted(indices)  # file order is kept


def test_empty_split_and_single_class_errors(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    write_json(tmp_path / "test.json", [{"text": "x", "label": "cooking"}])
    err = config_error(tmp_path, files_task(classes=["sports", "space"]))
    assert "test split is empty" in err.message and err.key == "tasks[0]"
    err = config_error(tmp_path, files_task(classes=["cooking"]), scenario="class_incremental")
    assert "at least 2 classes" in err.message and err.key == "tasks[0].classes"
    assert one_task(tmp_path, files_task(classes=["cooking"]), scenario="domain_incremental").label_names == ["cooking"]
    write_json(tmp_path / "empty.json", [])
    err = config_error(tmp_path, files_task(train="empty.json"))
    assert "has no rows" in err.message and "empty.json" in err.message


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("train.json", '[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]', "line 2"),
        ("train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": oops}\n', "line 3"),
        ("train.jsonl", '{"text": "a", "label": "x"}\n["not", "an", "object"]\n', "line 2 is not an object"),
        ("train.json", '[{"text": "a", "label": "x"}, "just a string"]', "item 1 is not an object"),
        ("train.json", '{"rows": [1, 2]', "line 1"),
        ("train.csv", "text,label\na,x\nb,y,z\n", "line 3 has 3 fields"),
        ("train.parquet", "not parquet at all", "cannot read parquet"),
        ("train.tsv", "hello", "unsupported file type '.tsv'"),
    ],
)
def test_bad_files(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    err = config_error(tmp_path, files_task(train=name, test=None))
    assert err.key == "tasks[0].source.train_file"
    assert str(tmp_path / name) in err.message and expected in err.message
    assert str(err).startswith(f"{tmp_path / 'stream.yaml'}:")


def test_missing_and_unreadable_files(tmp_path):
    err = config_error(tmp_path, files_task(train="nope.json", test=None))
    assert "file not found" in err.message and "nope.json" in err.message
    (tmp_path / "dir.json").mkdir()
    err = config_error(tmp_path, files_task(train="dir.json", test=None))
    assert "not a file" in err.message
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "x"}\n')
    err = config_error(tmp_path, files_task(train="latin.jsonl", test=None))
    assert "cannot read" in err.message and "latin.jsonl" in err.message


def test_missing_text_value(tmp_path):
    write_json(tmp_path / "train.json", [{"text": "a", "label": "x"}, {"label": "y"}])
    err = config_error(tmp_path, files_task(test=None))
    assert "row 1 of the train split" in err.message and "'text'" in err.message


# -- shared benchmark data -------------------------------------------------------------------------


def bench_task(name: str, train: bool = True, test: bool = True, **extra) -> dict:
    source = {"type": "files"}
    if train:
        source["train_file"] = f"${{DATA_ROOT}}/{name}/train.json"
    if test:
        source["test_file"] = f"${{DATA_ROOT}}/{name}/test.json"
    return {
        "name": name,
        "source": source,
        "text_field": "sentence",
        "label_names": f"${{DATA_ROOT}}/{name}/labels.json",
        **extra,
    }


def bench_stream(tmp_path: Path, bench: Path, tasks: list[dict], scenario="class_incremental") -> LoadedStream:
    return make_stream(tmp_path, tasks, scenario, variables={"DATA_ROOT": str(bench)})


def test_real_agnews_and_yelp(tmp_path, bench):
    stream = bench_stream(tmp_path, bench, [bench_task("agnews"), bench_task("yelp", test=False)])
    agnews, yelp = load_stream_tasks(stream)
    assert agnews.label_names == ["World", "Sports", "Business", "Science or Technology"]
    assert len(agnews.train_texts) == 4000 and len(agnews.test_texts) == 7600
    assert set(agnews.train_labels) == {0, 1, 2, 3} and all(isinstance(t, str) for t in agnews.test_texts[:50])
    assert yelp.label_names == ["very negative", "negative", "neutral", "positive", "very positive"]
    assert len(yelp.train_texts) + len(yelp.test_texts) == 5000
    assert 950 <= len(yelp.test_texts) <= 1050 and len(set(yelp.test_labels)) == 5
    assert load_task(stream, 1) == yelp  # deterministic across calls
    totals = Counter(yelp.train_labels) + Counter(yelp.test_labels)
    test_counts = Counter(yelp.test_labels)
    assert all(abs(test_counts[label] - 0.2 * totals[label]) <= 1 for label in totals)  # stratified


def test_real_dbpedia_train_carved_from_test(tmp_path, bench):
    dbpedia = bench_task("dbpedia", train=False, train_per_class=50, test_per_class=20)
    stream = bench_stream(tmp_path, bench, [dbpedia, bench_task("agnews")])
    dbpedia = load_task(stream, 0)
    assert len(dbpedia.label_names) == 14
    assert Counter(dbpedia.train_labels) == {i: 50 for i in range(14)}
    assert Counter(dbpedia.test_labels) == {i: 20 for i in range(14)}
    assert not set(dbpedia.train_texts) & set(dbpedia.test_texts)


def test_real_mnli_unknown_labels(tmp_path, bench):
    stream = bench_stream(tmp_path, bench, [bench_task("mnli"), bench_task("agnews")])
    with pytest.raises(ConfigError) as info:
        load_task(stream, 0)
    err = info.value
    assert err.file == str(stream.path) and err.key == "tasks[0].label_names"
    assert "131 rows of the test split" in err.message and "mnli/test.json" in err.message and "'-'" in err.message
    stream = bench_stream(tmp_path, bench, [bench_task("mnli", drop_unknown_labels=True), bench_task("agnews")])
    mnli = load_task(stream, 0)
    assert mnli.label_names == ["neutral", "entailment", "contradiction"]
    assert len(mnli.train_texts) == 3000 and len(mnli.test_texts) == 7600 - 131
