"""tunelab: fine-tune, evaluate, serve and monitor language models on your own hardware."""

__version__ = "0.1.0"

from tunelab.config import Config, ConfigError, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "__version__"]
