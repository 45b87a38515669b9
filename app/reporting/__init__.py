"""The tools on top: they read what runs and benchmarks wrote, and nothing in app/ imports them.

report.py      tables and plots from outputs/ into outputs/reports/ and docs/results.md (`python -m app.report`)
plots.py       the report's figures
bench.py       speed of the engines and their peers, into outputs/bench/*.json (`python -m app.bench`)
onnx_peers.py  the ONNX Runtime peers bench.py times beside the integer engine
peers.py       an off-the-shelf recognizer (PocketSphinx) on our ASR test sets (`python -m app.peers`)
"""
