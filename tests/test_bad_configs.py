"""Every bad input gets one clear message and exit code 2: one file per mistake in tests/bad_configs/.

Each experiment file starts with ``# expect: <text of the message>`` and, where the mistake has
one, ``# key: <key path>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_harness.cli import main

FOLDER = Path(__file__).resolve().parent / "bad_configs"
CASES = sorted(p for p in FOLDER.glob("*.yaml") if not p.name.startswith("stream_"))


def expectations(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ": " in line:
            name, value = line[2:].split(": ", 1)
            found[name] = value
    return found


def test_the_folder_holds_the_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_config_is_refused_with_one_clear_message(path, capsys):
    expected = expectations(path)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    message = captured.err
    assert message.startswith("error: ") and "Traceback" not in message, message
    assert expected["expect"] in message, message
    if "key" in expected:
        assert f" {expected['key']}: " in message, message
    assert str(FOLDER) in message or "backbone.name" in message, message  # names the file it is about
