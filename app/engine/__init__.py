"""Integer-only inference engine.

Two implementations of the same integers:
- the torch-op engine (``lm.py``, ``asr.py``, ``lstm.py``, ...): the readable specification, which the QAT
  simulation shares; its hot loops call the C kernels of ``csrc/`` through registered torch operators;
- the native runtime (``native.py`` over ``csrc/qrnn_*.c``): the whole LM step and the whole recognizer in C,
  batched and threaded, with scalar / AVX2 / AVX-512 VNNI kernels, also usable without Python (``qrnn-run``).

On the CPU every op of both takes and returns integer tensors and no floating-point operation runs
(``tests/test_engine_guard.py`` runs the torch-op engine under a dispatch guard; ``tests/test_native.py``
checks the C sources and the compiled library for floating-point types and instructions). One exception
off the run path: on a GPU, ``qrnn::int8_gemm_nt`` (used by QAT there) computes the same integers with a
float64 GEMM, exact because every partial sum is an integer below 2^53. Host float code sits outside the
engine: feature extraction and its rounding to int8, softmax / log-softmax, beam and CTC prefix scores.
The package imports nothing from the training code (tasks, Lightning, app.quant): an integer checkpoint
loads and runs with torch + safetensors alone.
"""
