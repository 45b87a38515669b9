"""OmegaConf resolvers used by `conf/` (registered by the entry points and the tests before composing), `build`,
and `flatten` (a config tree as dotted keys).
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import OmegaConf

from app.errors import UserInputError


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


def build(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a UserInputError raised by the built class surfaces as
    itself (Hydra wraps it in an InstantiationException), so entry points print it as one line."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserInputError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"quant": {"name": "irnn"}} -> {"quant.name": "irnn"} (lists and empty mappings are values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
