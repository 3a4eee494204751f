"""The `medvtc` command line: help at every level, clear one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medvtc.cli import main


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medvtc", *args], capture_output=True, text=True, cwd=cwd)


def test_top_level_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    for command in ("train", "eval", "bench", "data"):
        assert command in r.stdout


@pytest.mark.parametrize("command", ["train", "eval", "bench", "data"])
def test_subcommand_help_explains_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--task" in out and "--config" in out and "key=value" in out
    assert "compressors" in out


def test_train_help_mentions_resume_and_torchrun(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "torchrun" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("medvtc: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_unknown_task_lists_valid_tasks():
    r = cli("train", "--task", "ct-reprot")
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "ct-reprot" in line and "compressors" in line


def test_unknown_key_lists_valid_keys(tmp_path):
    r = cli("train", "--task", "compressors", "train.learning_rate=1", cwd=tmp_path)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "train.learning_rate" in line and "lr" in line and "max_steps" in line


def test_bad_value_names_key_and_choices(tmp_path):
    r = cli("train", "--task", "compressors", "train.precision=fp8", cwd=tmp_path)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "train.precision" in line and "'bf16'" in line


def test_unknown_compressor_lists_the_registry(tmp_path):
    data = tmp_path / "tg"
    assert cli("data", "--task", "compressors", f"data.root={data}", "data.num_train=4", "data.num_val=2",
               "data.num_test=2", "data.grid=[4,4]", "data.dim=8", "data.text_dim=4", cwd=tmp_path).returncode == 0
    r = cli("train", "--task", "compressors", "model.name=tome2", f"data.root={data}", "train.batch_size=2", cwd=tmp_path)
    assert r.returncode == 2
    line = _one_error_line(r.stderr)
    assert "tome2" in line and "random" in line and "identity" in line


def test_missing_config_file_and_data_root(tmp_path):
    r = cli("train", "--task", "compressors", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in _one_error_line(r.stderr)
    r = cli("eval", "--task", "compressors", "--checkpoint", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2 and "missing" in _one_error_line(r.stderr)


def test_python_dash_m_and_entry_point_agree():
    import shutil

    exe = shutil.which("medvtc") or str(__import__("pathlib").Path(sys.executable).with_name("medvtc"))
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "medvtc" in r.stdout


def test_no_cuda_cudart_deprecation_noise(tmp_path):
    """MONAI probes the deprecated `cuda.cudart` on import (a FutureWarning from cuda-bindings);
    medvtc silences it. `medvtc data --task tokenseg --inspect` on a missing MSD root loads MONAI
    (the tokenseg dataset) and fails fast; the child also says whether MONAI was loaded, so the
    check means something."""
    code = (
        "import sys; from medvtc.cli import main; rc = main(sys.argv[1:]); "
        "print('monai loaded:', 'monai' in sys.modules); sys.exit(rc)"
    )
    args = ["data", "--task", "tokenseg", "--inspect", f"data.root={tmp_path / 'missing'}"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "missing" in _one_error_line(r.stderr)
    assert "monai loaded: True" in r.stdout
    assert "cuda.cudart" not in r.stderr, r.stderr
