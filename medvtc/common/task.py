"""What an application plugs into the CLI: its config class and its commands.

Each task (`compressors`, and the applications the later issues add) subclasses `Task` and is
listed in `medvtc.tasks`. The CLI resolves `--task`, loads the config (defaults, then
`medvtc/configs/<task>.yaml`, then `--config`, then `key=value` overrides) and calls the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from medvtc.common.config import load_config
from medvtc.common.errors import UserError

# The tasks' default YAML files ship inside the package (package data), so an installed wheel has them too.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class Task:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type]
    commands: ClassVar[tuple[str, ...]] = ("train", "eval", "bench", "data")

    def default_config_path(self) -> Path | None:
        path = CONFIGS_DIR / f"{self.name}.yaml"
        return path if path.is_file() else None

    def load_config(self, path: str | None, overrides: Sequence[str]) -> Any:
        base_path = self.default_config_path()
        base = None
        if base_path is not None and path is not None and Path(path).resolve() != base_path:
            from medvtc.common.config import read_yaml

            base = read_yaml(base_path)
            return load_config(self.config_class, path, overrides, base=base)
        return load_config(self.config_class, path or base_path, overrides)

    def check_command(self, command: str) -> None:
        if command not in self.commands:
            raise UserError(
                f"task {self.name!r} has no {command!r} command; it supports: {', '.join(self.commands)}"
            )

    # Commands: return a process exit code.
    def train(self, cfg: Any, resume: bool = False) -> int:
        raise NotImplementedError

    def eval(self, cfg: Any, checkpoint: str | None) -> int:
        raise NotImplementedError

    def rollout(self, cfg: Any, checkpoint: str, **options: Any) -> int:
        raise NotImplementedError  # only tasks with a simulator (libero) list "rollout" in `commands`

    def bench(self, cfg: Any, output: str, retrain: bool = False) -> int:
        """Run the side-by-side benchmark (`medvtc.common.bench_runner`); `retrain` trains again
        the variants whose run folder holds a run under other settings."""
        raise NotImplementedError

    def data(self, cfg: Any, inspect: bool = False, overwrite: bool = False) -> int:
        raise NotImplementedError

    @staticmethod
    def ensure_embedded_data(root: str | Path, is_default: bool, expected: str, making: str, make: Callable[[], Any]) -> None:
        """Before train/eval/bench: nothing to do when `root` exists; the embedded default set is
        made (`make()`, announced as `making`) when `root` is the task's default location; a
        user's own root that is missing is an error saying what was `expected` there."""
        root = Path(root)
        if root.exists():
            return
        if not is_default:
            raise UserError(f"data.root {root} does not exist (expected {expected})")
        print(f"medvtc: {making} at {root}")
        make()
