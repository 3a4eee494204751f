"""Task.ensure_embedded_data: the one rule every task follows before train/eval/bench."""

from __future__ import annotations

import pytest

from medvtc.common.errors import UserError
from medvtc.common.task import Task


def test_missing_user_root_is_an_error_and_nothing_is_made(tmp_path):
    made = []
    with pytest.raises(UserError, match=r"data.root .*mine does not exist \(expected an MSD task folder\)"):
        Task.ensure_embedded_data(tmp_path / "mine", False, "an MSD task folder", "making", lambda: made.append(1))
    assert made == [] and not (tmp_path / "mine").exists()


def test_default_root_is_made_once_and_an_existing_root_is_left_alone(tmp_path, capsys):
    root = tmp_path / "default"
    Task.ensure_embedded_data(root, True, "x", "generating the phantom", lambda: root.mkdir())
    assert root.is_dir() and f"generating the phantom at {root}" in capsys.readouterr().out
    Task.ensure_embedded_data(root, True, "x", "generating the phantom", lambda: pytest.fail("made twice"))
    Task.ensure_embedded_data(root, False, "x", "y", lambda: pytest.fail("an existing user root was touched"))
