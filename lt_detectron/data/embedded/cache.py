"""Where ``lt_shapes`` lives and how it gets there: the cached folder, atomic generation, and the
clean-up of temporary folders left by interrupted generations."""

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, List

from ...utils.atomic import STALE_TEMP_AGE_S, remove_stale_temps, temp_prefix
from ...utils.cache import cache_base, cache_dir_error, ensure_cache_dir
from .plan import plan_lt_shapes
from .render import write_dataset
from .spec import VERSION

__all__ = [
    "STALE_TEMP_AGE_S",
    "cleanup_stale_temp",
    "default_cache_root",
    "lt_shapes_paths",
    "is_complete",
    "generate_lt_shapes",
    "get_lt_shapes",
]


def cleanup_stale_temp(
    root, max_age_s: float = STALE_TEMP_AGE_S, min_age_s: float = 60.0
) -> List[str]:
    """Remove temporary siblings ``.{root.name}.tmp-{pid}@{host}-{hex}`` left by killed generations.

    A folder is stale when its process is gone from this host (at once: a rerun right after a kill
    cleans up), or when it was not modified for ``max_age_s`` (another host's generation sharing the
    folder is left alone until then). Folders named without a host (``.tmp-{pid}-{hex}``, earlier
    versions) are stale when their pid is gone and they are older than ``min_age_s``, or by age.
    Returns the removed paths (:func:`lt_detectron.utils.atomic.remove_stale_temps`).
    """
    root = Path(root)
    return remove_stale_temps(root.parent, ".%s.tmp-" % root.name, max_age_s, min_age_s)


def default_cache_root(seed: int = 0) -> Path:
    """``$LT_DETECTRON_CACHE/lt_shapes_{VERSION}_seed{seed}`` (default base ``~/.cache/lt_detectron``)."""
    return Path(cache_base()) / f"lt_shapes_{VERSION}_seed{seed}"


def lt_shapes_paths(root) -> Dict[str, str]:
    """The dataset's files under ``root``: ``root``, ``{train,val}_json``, ``{train,val}_images``."""
    root = Path(root)
    return dict(
        root=str(root),
        train_json=str(root / "lt_shapes_train.json"),
        val_json=str(root / "lt_shapes_val.json"),
        train_images=str(root / "train"),
        val_images=str(root / "val"),
    )


def is_complete(root: Path) -> bool:
    """Both jsons and both image folders exist under ``root``."""
    p = lt_shapes_paths(root)
    return all(os.path.isfile(p[k]) for k in ("train_json", "val_json")) and all(
        os.path.isdir(p[k]) for k in ("train_images", "val_images")
    )


def generate_lt_shapes(
    root, seed: int = 0, overwrite: bool = False, preview: bool = False, **cfg
) -> Dict[str, str]:
    """Generate the dataset into ``root`` (atomically) and return :func:`lt_shapes_paths`.

    Written to a temporary sibling folder, renamed to ``root`` only when complete: an
    interrupted generation never leaves a partial ``root``. ``cfg`` overrides :data:`DEFAULTS`.
    """
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} exists (use overwrite=True)")
    plan = plan_lt_shapes(seed, **cfg)
    ensure_cache_dir(root.parent)
    for p in cleanup_stale_temp(root):
        logging.getLogger(__name__).warning(
            "removed the temporary folder of an interrupted generation: %s", p
        )
    tmp = root.parent / (temp_prefix(root.name) + uuid.uuid4().hex[:8])
    try:
        try:
            tmp.mkdir()
        except OSError as e:
            raise cache_dir_error(root.parent, e) from None
        write_dataset(plan, tmp)
        if preview:
            from .preview import render_class_strip, render_preview

            render_preview(tmp, tmp / "preview.png")
            render_class_strip(tmp, tmp / "classes.png")
        if root.exists() and overwrite:
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if is_complete(root):  # a concurrent generation finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return lt_shapes_paths(root)


def get_lt_shapes(root=None, seed: int = 0) -> str:
    """Return the dataset folder (default :func:`default_cache_root`), generating it with the
    default options on first use. The json files are ``lt_shapes_{train,val}.json`` in it."""
    root = Path(root) if root is not None else default_cache_root(seed)
    if not is_complete(root):
        if root.exists():
            if any(root.iterdir()):
                raise FileExistsError(
                    f"{root} exists, is not empty and holds no complete lt_shapes dataset"
                )
            root.rmdir()
        generate_lt_shapes(root, seed=seed)
    return str(root)
