"""The ``tensorrt`` backend: TensorRT engines of the Stable Diffusion networks.

    onnx_export.py    the three networks as ONNX graphs with the run's static shapes
    engine_cache.py   what an engine is keyed by; building each engine once per node
    runner.py         building engines with the TensorRT Python API and running them on torch tensors
    forwards.py       the backend's set-up: the networks' calls routed to their engines
"""
