"""The full-size CT figures of `medvtc bench --task ct-report` (`bench.scale`) alone, without
training or evaluating the bench's variants (README, ct-report results):

    OMP_NUM_THREADS=1 python scripts/ct_full_size_peak.py [key=value ...]

Runs the bench's own `run_scale` with the ct-report config (`medvtc/configs/ct-report.yaml` plus
overrides, e.g. `bench.scale_size=[256,256,128]`): a phantom CT rendered at `bench.scale_size`
(512 x 512 x 256) and written as NIfTI under `bench.output_dir/scale/` (reused when there), then
read, preprocessed (`data.hu_bins` channels, stored in `bench.scale_dtype`) and turned into a 16-token report by an untrained
model, once compressed and once uncompressed, each in its own subprocess. Prints one line per
path and the JSON (peak RSS from VmHWM, MiB), which `-o FILE` also writes."""

from __future__ import annotations

import argparse
import json

from medvtc.common.io import atomic_write_json
from medvtc.medical.ct_report.bench import _scale_lines, run_scale
from medvtc.tasks import get_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("-o", "--output", help="also write the JSON here")
    args = parser.parse_args()
    cfg = get_task("ct-report").load_config(None, args.overrides)
    scale = run_scale(cfg)
    print("\n".join(_scale_lines(scale)))
    print(json.dumps(scale, indent=1))
    if args.output:
        atomic_write_json(args.output, scale)
