"""Add 95 % Wilson intervals to a success-rate bench json written before the shared runner.

    python scripts/add_wilson_intervals.py benchmarks/results/libero.json

The libero results committed before `medvtc.common.bench_runner` existed hold each row's
success rates but not its episodes. A Wilson interval needs only the count of successes and of
episodes (rate x episodes per task, from the file's own config), so it can be added exactly; a
paired difference to `none` needs the per-episode outcomes and cannot: rerunning
`medvtc bench --task libero` gives both. The markdown table is rewritten from the json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medvtc.common.intervals import wilson_interval
from medvtc.common.io import atomic_write_json, atomic_write_text
from medvtc.common.results import difference_table, markdown_table


def main(path: str) -> None:
    p = Path(path)
    doc = json.loads(p.read_text())
    bench = doc["config"]["bench"]
    episodes, tasks = int(bench["episodes"]), [int(t) for t in bench["tasks"]]
    for row in doc["rows"]:
        m = row["metrics"]
        per_task = {t: round(m[f"success_task_{t}"] * episodes) for t in tasks if f"success_task_{t}" in m}
        for t, k in per_task.items():
            m[f"success_task_{t}_ci"] = [round(v, 4) for v in wilson_interval(k, episodes)]
        if "success_rate" in m:
            n = episodes * len(tasks)
            m["success_rate_ci"] = [round(v, 4) for v in wilson_interval(round(m["success_rate"] * n), n)]
    doc["config"]["intervals_note"] = ("success_*_ci: Wilson intervals added afterwards from the stored rates and "
                                       "episode counts (scripts/add_wilson_intervals.py); no per-episode outcomes "
                                       "were kept, so no paired differences")
    atomic_write_json(p, doc)
    md = p.with_suffix(".md")
    if md.is_file():
        text = md.read_text()
        head, _, rest = text.partition("| method |")
        table_end = rest.find("\n\n")
        tail = rest[table_end:] if table_end >= 0 else ""
        atomic_write_text(md, head + markdown_table(doc["rows"]) + difference_table(doc["rows"], None) + tail)


if __name__ == "__main__":
    main(sys.argv[1])
