"""The TensorRT backend of the Stable Diffusion pipeline.

    onnx_export.py    the three networks as ONNX graphs with the run's static shapes
    engine_cache.py   what an engine is keyed by; building each engine once per node
    runner.py         building engines with the TensorRT Python API and running them on torch tensors
"""

from stablerep_fast.generate.tensorrt.runner import TensorRTBackend, TensorRTUnavailable, tensorrt_unavailable_reason

__all__ = ["TensorRTBackend", "TensorRTUnavailable", "tensorrt_unavailable_reason"]
