"""medvtc: visual-token compression for 3D medical imaging and robot control."""

import warnings

# `import monai` probes the optional `cuda.cudart` (monai.networks.trt_compiler, via
# optional_import); cuda-bindings 12.9 (a dependency of torch's CUDA wheels) deprecates that module
# with a FutureWarning raised while it is imported, so every command that loads MONAI printed it.
# medvtc never uses cuda.cudart; silence exactly that message, attributed to the import machinery.
warnings.filterwarnings(
    "ignore",
    message=r"The cuda\.cudart module is deprecated",
    category=FutureWarning,
    module=r"importlib\._bootstrap",
)

# Before anything imports torch: OpenMP reads its wait policy once, at start-up (see
# medvtc/common/threads.py for why medvtc prefers PASSIVE, and the figures behind it).
from medvtc.common.threads import prefer_passive_wait  # noqa: E402

prefer_passive_wait()

__version__ = "0.1.0"
