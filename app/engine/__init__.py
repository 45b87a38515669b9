"""Integer-only inference engine.

Everything on the run path of this package takes and returns integer tensors and performs no
floating-point operation (``tests/test_engine_guard.py`` proves it under a dispatch guard).
It imports nothing from the training code (tasks, Lightning, app.quant): an integer checkpoint
loads and runs with torch + safetensors alone.
"""
