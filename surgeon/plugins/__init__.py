"""surgeon's TensorRT plugins: specs and CPU references (`specs`), CUDA kernels (`*.cu`), their build."""
