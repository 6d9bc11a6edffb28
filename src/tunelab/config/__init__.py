"""The config contract: one typed, nested schema (`schema.py`) loaded from YAML with dotted overrides
(`load.py`). `tunelab schema` prints its JSON schema; every shipped example config is tested against it."""

from tunelab.config.load import (apply_overrides, config_from_dict, differences, dump_config, json_schema,
                                 load_config, parse_override)
from tunelab.config.schema import (Config, DataConfig, DedupConfig, EvalConfig, MethodConfig, ModelConfig,
                                   TrainConfig, check_name)
from tunelab.core.errors import ConfigError

__all__ = ["Config", "ConfigError", "DataConfig", "DedupConfig", "EvalConfig", "MethodConfig", "ModelConfig",
           "TrainConfig", "apply_overrides", "check_name", "config_from_dict", "differences", "dump_config", "json_schema",
           "load_config", "parse_override"]
