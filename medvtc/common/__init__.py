"""The shared core: configs, trainer, checkpoints, accounting, results, compressors.

`medvtc.common` never imports an application (`medvtc.medical`, `medvtc.robotics`).
"""
