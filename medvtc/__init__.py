"""medvtc: visual-token compression for 3D medical imaging and robot control."""

__version__ = "0.1.0"
