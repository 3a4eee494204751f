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

__version__ = "0.1.0"
