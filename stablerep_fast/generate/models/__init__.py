"""What turns captions and noise into images: the Generator protocol and the generators.

    protocol.py            the Generator protocol, GenerationOutput, and the helpers that keep to it
    loader.py              load_generator: a built-in name, a diffusers folder, or "pkg.module:Class"
    families.py            diffusers model families: detection, default steps, guidance and sampler
    pipeline.py            StableRepPipeline: SD 1.x/2.x (turbo, LCM-LoRA) on its own denoising loop
    diffusers_pipeline.py  DiffusersGenerator: the other families through diffusers' own __call__
    shapes.py              the procedural "shapes" world
    scorers.py             caption-image consistency scorers: the worlds' truth, OpenCLIP, plugins
"""
