"""tunelab: fine-tune, evaluate, serve and monitor language models on your own hardware."""

import os

__version__ = "0.1.0"

# OpenMP threads that busy-wait between parallel regions collapse when another process holds a core:
# a LoRA step of SmolLM2 took 42 s with 2 spinning threads next to one busy process, 2.9 s with passive
# waiting and 2.5 s with 1 thread (2-core machine). Passive waiting costs little on an idle machine.
# It must be set before torch loads its OpenMP runtime; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tunelab.config import Config, ConfigError, load_config  # noqa: E402

__all__ = ["Config", "ConfigError", "load_config", "__version__"]
