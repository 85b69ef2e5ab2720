"""The model registry and downloader: which checkpoints jobs can name (issue 15).

``ModelRegistry.resolve(name)`` is the one way to a model: a registered name, or None (and the
name ``default``) for the default, which is the registered default or else the model the settings
name. The record's ``location`` is the path to load.
"""

from dreamforge.registry.records import ModelRecord
from dreamforge.registry.registry import ModelRegistry, models_root

__all__ = ["ModelRecord", "ModelRegistry", "models_root"]
