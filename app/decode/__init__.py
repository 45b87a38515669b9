"""Decoding speech: what turns a recognizer's logits into words, and how the words are scored.

options.py  DecodingOptions: beam size, length normalization, length limit, CTC weight, fused LM
search.py   greedy and beam search (joint CTC/attention, LM shallow fusion), one code for both engines
wer.py      corpus WER on normalized text, per-utterance records, the real-speech / synthetic summary
"""
