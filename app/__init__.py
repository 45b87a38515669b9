"""qrnn-speech: quantization-aware training of speech and language LSTMs (see README.md).

Importing `app` before torch sets OMP_WAIT_POLICY=PASSIVE unless you set it yourself: OpenMP threads
spin while they wait by default, and on a machine whose cores are shared that starves training
(2x200 LSTM LM on 2 shared cores: 410-960 tokens/s spinning, 2,100-2,250 tokens/s passive).
The entry points import `app` first for this reason.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
