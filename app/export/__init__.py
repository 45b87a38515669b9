"""A trained QAT model to the integer engine and back: export, load and evaluate integer checkpoints.

lm.py   the LM: model.int.safetensors, whole-split perplexity on the engine (softmax outside it)
asr.py  the recognizer: model.int.safetensors, int8 features, decoding on the engine (guarded), LM fusion loading
"""
