"""Time writing N default-size CT phantom volumes with W worker processes (README, the embedded
CT set): `python scripts/time_phantom_generation.py OUT_DIR 100 2` (OUT_DIR must not exist)."""

import sys
import time
from pathlib import Path

from medvtc.datasets.ct_phantom import generate_ct_rate

if __name__ == "__main__":  # the workers are spawned and re-import this script
    out, n, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    t0 = time.perf_counter()
    generate_ct_rate(out, num_train=n - 1, num_val=0, num_test=1, seed=0, progress=False, workers=workers)
    print(f"{n} volumes, workers={workers}: {time.perf_counter() - t0:.1f} s")
