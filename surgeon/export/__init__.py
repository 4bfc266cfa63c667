"""Exporting models that torch.onnx.export cannot trace, by hooking module forwards (docs/spconv.md).

- `surgeon.export.tracer`: `trace(model, ...)` runs the model once with the forwards of registered
  module types (and chosen methods) wrapped, and records one `Op` per handled call; `@handler`
  registers a handler for a module type or method.
- `surgeon.export.graph`: `build_model(trace, flavour)` turns the recorded ops into ONNX, folding
  BatchNorm and ReLU into the sparse convolutions, in the `libspconv` or `standard` flavour.
- `surgeon.export.spconv_handlers`: the handlers for spconv.pytorch 2.x and the tensors around it.
- `surgeon.export.spconv_export`: `export_spconv(...)`, the whole flow behind `surgeon export spconv`.
- `surgeon.export.tensor_file`: libspconv's tensor file format (NumPy only, no torch needed).
"""

#: Models `surgeon export spconv --model` can build (torch-free, so the CLI lists them without torch).
SPCONV_MODELS = {
    "centerpoint-scn": "CenterPoint / OpenPCDet VoxelResBackBone8x + height compression: "
                       "voxels [N,5] in 41x1440x1440 -> BEV [1,256,180,180]",
}
FLAVOURS = ("libspconv", "standard")  # see surgeon.export.graph
MISSING_SPCONV = "surgeon export spconv needs torch and spconv: pip install 'surgeon[zoo]'"
