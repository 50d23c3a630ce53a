"""Where processes, devices and process groups come from (the one place that knows)."""

from gpt.parallel.context import ParallelContext, destroy, initialize
from gpt.parallel.device import choose_device

__all__ = ["ParallelContext", "initialize", "destroy", "choose_device"]
