"""Prepare a word-level LM corpus: `python data_scripts/prepare_lm.py data=ptb` (or data=wikitext2).

Reads `data.source` (a directory, or an http(s) URL of an archive or of the raw files), verifies it
(checksums, token counts, vocabulary size), and writes what the LM datamodule reads under
`<paths.cache_dir>/lm/<data.name>/` (split text, vocab.txt, meta.json; see app/data/lm_corpus.py) plus
the tokenized Arrow cache. train.py does the same on first use, so running this is optional: it
prepares data ahead of time (e.g. before going offline or before a DDP run).
"""

import json
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

import app  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
from app.config import register_resolvers
from app.data.lm_corpus import read_meta
from app.errors import UserInputError

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_lm")
def main(cfg: DictConfig) -> None:
    try:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    meta = read_meta(datamodule.corpus_dir)
    summary = {key: meta[key] for key in ("name", "tokens", "vocab_size", "oov_tokens")}
    print(f"prepared {datamodule.corpus_dir}\n{json.dumps(summary, indent=2)}")


if __name__ == "__main__":
    main()
