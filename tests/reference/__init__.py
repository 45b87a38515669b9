"""An independent, slow, plain reference of the iRNN integer arithmetic, for the parity tests.

Written from the arithmetic as docs/methods.md (sections 1-5) and the engine docstrings state it, with
numpy int64 (every product is checked against int64 overflow) and Python ints, and **importing nothing from
``app.engine`` or ``app.quant``**: the QAT simulation and the torch-op engine share code, so comparing them
with each other cannot find a mistake in that shared code; comparing both with this can.

- ``arithmetic``: rounding, requantization, PWL evaluation, integer layer norm and square root, the LSTM
  cell and direction, integer softmax and additive attention, DenseShift code decoding;
- ``models``: the integer checkpoint file read by hand (safetensors framing, JSON metadata, SHA-256
  digests) and the LM and speech recognizer run on what it holds.

Nothing here is fast or clever on purpose: each function is the formula, one step after another.
"""
