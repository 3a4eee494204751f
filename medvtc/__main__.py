"""`python -m medvtc` (also what `torchrun -m medvtc` runs on every rank)."""

from medvtc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
