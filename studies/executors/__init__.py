"""Where a study's cells run: one registered executor per file (``study.py --executor NAME``).

``local`` (the default) runs every cell in this process, one after another; ``ray`` runs each
training and each attack as a Ray task. Add one by adding a file here with a ``@register``ed
:class:`Executor` subclass.
"""
from common.registry import load_plugins
from studies.executors.base import REGISTRY, Executor, ExecutorOptions, register

load_plugins(__name__)

__all__ = ["REGISTRY", "Executor", "ExecutorOptions", "register"]
