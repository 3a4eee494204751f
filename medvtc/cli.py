"""`medvtc` command line (also `python -m medvtc`, and `torchrun -m medvtc` for DDP).

    medvtc train --task compressors model.name=perceiver train.max_steps=500
    medvtc eval  --task compressors --checkpoint runs/compressors
    medvtc rollout --task libero --checkpoint runs/libero --suite libero_object --tasks 0,1,2 --episodes 10
    medvtc bench --task compressors
    medvtc data  --task compressors
    medvtc report --checkpoint runs/ct-report scan.nii.gz
    medvtc segment --checkpoint runs/tokenseg scan.nii.gz -o mask.nii.gz --png

User mistakes (unknown task, key or value, a missing file) print one line and exit with code 2;
no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from medvtc import __version__
from medvtc.tasks import TASKS, task_names

EXIT_USER_ERROR = 2

OVERRIDE_HELP = (
    "config overrides as key.sub=value (values are parsed as YAML), e.g. train.lr=1e-3 "
    "model.name=perceiver; any key of the task's config can be set"
)


class _Parser(argparse.ArgumentParser):
    """argparse that prints one clear line (plus usage) and exits 2 on a user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"medvtc: error: {message}\n")


def _task_help() -> str:
    return "; ".join(f"{name}: {desc}" for name, (_, desc) in sorted(TASKS.items()))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        choices=task_names(),
        metavar="TASK",
        help=f"the application, one of: {', '.join(task_names())} ({_task_help()})",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config; defaults to medvtc/configs/<task>.yaml, shipped with the package (keys you leave out keep their defaults)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDE_HELP)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medvtc",
        description=(
            "Visual-token compression for 3D medical imaging and robot control: a shared core "
            "of token compressors and the applications built on it."
        ),
        epilog="Run `medvtc COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"medvtc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a task's model with the shared trainer (checkpoints, resume, DDP via torchrun)",
        description=(
            "Train a task's model. Writes the resolved config, metrics.csv, TensorBoard logs and "
            "safetensors checkpoints under output_dir. Multi-process: torchrun --nproc_per_node N "
            "-m medvtc train ..."
        ),
    )
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")

    p = sub.add_parser("eval", help="evaluate a trained model on the held-out split", description="Evaluate a trained model on the held-out split and print its metrics.")
    _add_common(p)
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a run's output_dir, its final/ folder or one checkpoints/step_* folder (default: output_dir)",
    )

    p = sub.add_parser(
        "rollout",
        help="roll a trained robot policy out in its simulator: success per task, videos with the kept tokens",
        description=(
            "Run evaluation episodes of a trained policy on the benchmark's official initial states, print the "
            "success rate per task and overall, optionally save mp4 videos with the kept visual tokens drawn "
            "over the camera frames and the results as JSON. Any suite the installed LIBERO registers can be "
            "used, LIBERO-PRO's perturbed ones included; before the episodes run, one line per task says which "
            "of the policy's training tasks it corresponds to (the same task, a perturbed version of one, "
            "or unseen), also kept in the JSON. Options left out come from the config's eval.*."
        ),
    )
    _add_common(p)
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a trained policy: a run's output_dir or its final/ folder")
    p.add_argument("--suite", metavar="SUITE",
                   help="LIBERO suite: libero_object, libero_spatial, libero_goal, libero_10, libero_90 or any other the "
                        "installed LIBERO registers, e.g. LIBERO-PRO's libero_object_swap, libero_object_lan, "
                        "libero_object_object, libero_object_task (a wrong name lists them; default: eval.suite, else "
                        "data.suite)")
    p.add_argument("--tasks", type=_int_list, metavar="IDS", help="comma-separated task ids, e.g. 0,1,2 (default: eval.tasks)")
    p.add_argument("--episodes", type=int, metavar="N", help="episodes per task: official initial states 0..N-1 (default: eval.episodes)")
    p.add_argument("--max-episode-steps", type=int, metavar="N", help="episode limit (default: the suite's)")
    p.add_argument("--num-envs", type=int, metavar="N", help="environments run in parallel processes (default: eval.num_envs)")
    p.add_argument("--video-dir", metavar="DIR", help="write mp4 videos of episodes here, kept tokens drawn over the frames")
    p.add_argument("--video-episodes", type=int, metavar="N", help="videos of the first N episodes of each task (default 1 with --video-dir)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the results (per episode) as JSON")

    p = sub.add_parser(
        "bench",
        help="run the task's side-by-side benchmark; writes benchmarks/results/<task>.{json,md,png}",
        description="Run the task's side-by-side benchmark on this machine and write JSON, a markdown table and a plot.",
    )
    _add_common(p)
    p.add_argument("--output", metavar="DIR", default="benchmarks/results", help="folder for the results (default: %(default)s)")
    p.add_argument("--retrain", action="store_true",
                   help="train again every variant whose run folder holds a run trained under other settings "
                        "(without it the bench stops, naming the first differing key)")

    p = sub.add_parser(
        "data",
        help="generate the task's embedded default dataset, or inspect one",
        description="Generate the task's embedded synthetic dataset (deterministic from data.seed) in the on-disk format real data uses, or --inspect an existing one.",
    )
    _add_common(p)
    p.add_argument("--inspect", action="store_true", help="describe the dataset at data.root instead of generating it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at data.root")

    p = sub.add_parser(
        "report",
        help="write radiology reports for CT volumes with a trained ct-report model",
        description=(
            "Write the report for one NIfTI CT volume, several, or every .nii/.nii.gz in a folder "
            "(recursively). Volumes that cannot be read are listed at the end (exit code 1); the others "
            "still get their reports."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a trained model: a run's output_dir or its final/ folder")
    p.add_argument("inputs", nargs="+", metavar="VOLUME", help=".nii/.nii.gz files or folders of them")
    p.add_argument("-o", "--output", metavar="PATH", help="a .txt file (one volume), a .csv file, or a folder for one .txt per volume; default: print")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (default 1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest report in tokens (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="volumes per forward pass (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    p = sub.add_parser(
        "segment",
        help="segment MRI/CT volumes with a trained tokenseg model (NIfTI masks, optional PNGs)",
        description=(
            "Segment one NIfTI scan (-o mask.nii.gz; default <scan>_seg.nii.gz beside it), several, or every "
            ".nii/.nii.gz in a folder (-o FOLDER). Masks keep the scan's voxel grid, affine and header. Scans "
            "that cannot be read are listed at the end (exit code 1); the others are still segmented. Outputs "
            "are written atomically, only once a scan is done."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a trained model: a tokenseg run's output_dir or its final/ folder")
    p.add_argument("inputs", nargs="+", metavar="SCAN", help=".nii/.nii.gz files (channels as the 4th dimension) or folders of them")
    p.add_argument("-o", "--output", metavar="PATH", help="the mask file (one scan) or a folder (several scans)")
    p.add_argument("--png", action="store_true", help="also write <mask>.png: slices with the mask and the kept tokens drawn over them")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from medvtc.common.errors import UserError

    try:
        if args.command == "segment":
            from medvtc.medical.tokenseg.segment_command import run_segment

            return run_segment(args.checkpoint, args.inputs, args.output, args.png, args.overwrite)
        if args.command == "report":
            from medvtc.medical.ct_report.report_command import run_report

            if args.num_beams < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
                raise UserError("--num-beams, --max-new-tokens and --batch-size must be >= 1")
            return run_report(args.checkpoint, args.inputs, args.output, args.num_beams, args.max_new_tokens,
                              args.batch_size, args.overwrite)
        from medvtc.tasks import get_task

        task = get_task(args.task)
        task.check_command(args.command)
        cfg = task.load_config(args.config, args.overrides)
        if args.command == "train":
            return task.train(cfg, resume=args.resume)
        if args.command == "eval":
            return task.eval(cfg, args.checkpoint)
        if args.command == "rollout":
            return task.rollout(cfg, args.checkpoint, suite=args.suite, tasks=args.tasks, episodes=args.episodes,
                                max_episode_steps=args.max_episode_steps, num_envs=args.num_envs,
                                video_dir=args.video_dir, video_episodes=args.video_episodes, output=args.output)
        if args.command == "bench":
            return task.bench(cfg, args.output, retrain=args.retrain)
        if args.command == "data":
            return task.data(cfg, inspect=args.inspect, overwrite=args.overwrite)
        raise AssertionError(args.command)
    except UserError as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"medvtc: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medvtc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
