"""The Compressor-VLA policy in LeRobot's layout (configuration / modeling / processor).

Importing this package registers the config with LeRobot as policy type `compressor_vla` and the
hashed tokenizer step with LeRobot's processor registry, so `PreTrainedConfig.from_pretrained`,
`lerobot.policies.factory.make_policy` / `make_pre_post_processors` and
`PolicyProcessorPipeline.from_pretrained` all work on saved checkpoints.
"""

from medvtc.robotics.policies.compressor_vla.configuration_compressor_vla import CompressorVLAConfig
from medvtc.robotics.policies.compressor_vla.modeling_compressor_vla import CompressorVLAPolicy
from medvtc.robotics.policies.compressor_vla.processor_compressor_vla import (
    HashedTokenizerProcessorStep,
    HashedWordTokenizer,
    make_compressor_vla_pre_post_processors,
)

__all__ = [
    "CompressorVLAConfig",
    "CompressorVLAPolicy",
    "HashedTokenizerProcessorStep",
    "HashedWordTokenizer",
    "make_compressor_vla_pre_post_processors",
]
