"""OmegaConf resolvers used by `conf/` (registered by the entry points and the tests before composing)."""

from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import OmegaConf


def run_dir_for(ckpt_path: str | None, new_run_dir: str) -> str:
    """The run directory of `<run>/checkpoints/x.ckpt` (resuming continues there), else `new_run_dir`."""
    if ckpt_path:
        checkpoint = Path(to_absolute_path(str(ckpt_path)))
        if checkpoint.parent.name == "checkpoints":
            return str(checkpoint.parent.parent)
    return new_run_dir


def register_resolvers() -> None:
    """`${abspath:p}`: p made absolute against the launch directory; `${run_dir_for:ckpt,new}`: see above."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda path: to_absolute_path(str(path)))
    if not OmegaConf.has_resolver("run_dir_for"):
        OmegaConf.register_new_resolver("run_dir_for", run_dir_for)
