"""surgeon: pluggable ONNX graph surgery for deploying BEV 3D perception models.

The Python API mirrors the command line:

    import surgeon
    recipe = surgeon.load_recipe("recipes/bevformer-tiny.yaml", overrides=["grid-sample.mode=decompose"])
    result = surgeon.run_recipe(recipe, output="out/bevformer-tiny.onnx")
    surgeon.get_pass("grid-sample")
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load_recipe": "surgeon.recipe",
    "run_recipe": "surgeon.pipeline",
    "get_pass": "surgeon.registry",
    "load_target": "surgeon.targets",
    "SurgeonError": "surgeon.errors",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    # Imported lazily so `import surgeon` stays cheap and works for `surgeon --version`.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
