"""A Hugging Face ``datasets`` cache holding the bundled mini datasets under the real hub ids.

With ``HF_HOME=<folder> HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``, ``datasets.load_dataset(hub_id,
config, split=...)`` cannot reach the hub and falls back to the datasets it prepared before
(``load.py``: ``CachedDatasetModuleFactory``; ``packaged_modules/cache/cache.py``). It looks in

    <HF_HOME>/datasets/<namespace>___<name>/<config>/<version>/<hash>/

takes the folder of the config asked for (with no config, the only one there), there the most
recently modified ``<version>/<hash>`` whose ``dataset_info.json`` names that config, and reads the
split from ``<name>-<split>.arrow`` (``name``: the hub id's last part). The hub's own file cache
(``<HF_HOME>/hub``) is not involved.

:func:`build_dataset_cache` writes that folder for each entry of :data:`DATASETS` from the bundled
JSON Lines files, which are already in the real datasets' schemas, typed with the real datasets'
features. The generic json builder prepares it, so the Arrow files and ``dataset_info.json`` are
what ``datasets`` itself writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path

import datasets
from datasets import Features, Sequence, Value
from datasets.naming import camelcase_to_snakecase
from datasets.packaged_modules.json.json import Json

#: registry name -> (hub id, config or None, stem of the bundled files uqflow/data/files/<stem>.<split>.jsonl)
DATASETS: dict[str, tuple[str, str | None, str]] = {
    "trivia_qa": ("mandarjoshi/trivia_qa", "rc.nocontext", "trivia_mini"),
    "squad": ("rajpurkar/squad_v2", None, "squad_mini"),
}

_SPLITS = ("train", "validation")
#: the packaged builders' version, which the hub's Parquet exports get too
_VERSION = "0.0.0"
#: the config folder of a dataset loaded with no config: its only config on the hub
_ONLY_CONFIG = {"rajpurkar/squad_v2": "squad_v2"}

_STRING = Value("string")
#: the features the hub datasets' builders declare (a Sequence of a dict is a dict of lists)
_FEATURES = {
    "mandarjoshi/trivia_qa": Features({
        "question": _STRING,
        "question_id": _STRING,
        "question_source": _STRING,
        "entity_pages": Sequence({"doc_source": _STRING, "filename": _STRING, "title": _STRING,
                                  "wiki_context": _STRING}),
        "search_results": Sequence({"description": _STRING, "filename": _STRING, "rank": Value("int32"),
                                    "title": _STRING, "url": _STRING, "search_context": _STRING}),
        "answer": {
            "aliases": Sequence(_STRING),
            "normalized_aliases": Sequence(_STRING),
            "matched_wiki_entity_name": _STRING,
            "normalized_matched_wiki_entity_name": _STRING,
            "normalized_value": _STRING,
            "type": _STRING,
            "value": _STRING,
        },
    }),
    "rajpurkar/squad_v2": Features({
        "id": _STRING,
        "title": _STRING,
        "context": _STRING,
        "question": _STRING,
        "answers": Sequence({"text": _STRING, "answer_start": Value("int32")}),
    }),
}

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def build_dataset_cache(hf_home: Path) -> list[str]:
    """Fill hf_home/datasets for each entry of DATASETS (train and validation splits), offline; returns
    what was written, one line each (hub id, config, split sizes). Idempotent: a second call rebuilds
    nothing that is already there."""
    root = Path(hf_home) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    with _offline():
        return [_build(root, hub_id, config, stem) for hub_id, config, stem in DATASETS.values()]


def _build(root: Path, hub_id: str, config: str | None, stem: str) -> str:
    """Prepare one dataset's folder unless it is there already; a line saying what it holds."""
    namespace, name = hub_id.split("/")
    config_id = config or _ONLY_CONFIG[hub_id]
    features = _FEATURES[hub_id]
    with ExitStack() as stack:
        files = {split: stack.enter_context(resources.as_file(resources.files("uqflow.data") / "files" /
                                                              f"{stem}.{split}.jsonl"))
                 for split in _SPLITS}
        # where the hub cache has the commit, the hash of what is built: changed files or features land
        # in a new, newer folder, which is the one datasets picks
        digest = hashlib.sha256(json.dumps(features.to_dict(), sort_keys=True).encode())
        for split in _SPLITS:
            digest.update(files[split].read_bytes())
        target = root / f"{namespace}___{camelcase_to_snakecase(name)}" / config_id / _VERSION / digest.hexdigest()[:16]
        built = not target.is_dir()
        if built:
            # the builder cannot be told the namespace (with a repo_id it wants the data files on the hub):
            # it prepares <name>/... in a staging folder, and the finished folder is moved in whole, so a
            # folder at the target is always complete
            with tempfile.TemporaryDirectory(dir=root, prefix=".staging-") as staging:
                builder = Json(cache_dir=staging, dataset_name=name, config_name=config_id, config_id=config_id,
                               hash=target.name, features=features,
                               data_files={split: str(path) for split, path in files.items()})
                builder.download_and_prepare()
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(builder.cache_dir, target)
    splits = datasets.DatasetInfo.from_directory(str(target)).splits
    sizes = ", ".join(f"{split} {splits[split].num_examples}" for split in _SPLITS)
    return f"{hub_id} ({config_id}): {sizes} ({'built' if built else 'already there'}) in {target}"


@contextmanager
def _offline() -> Iterator[None]:
    """Offline mode for the build: the environment variables, and the flags ``datasets`` read from them
    when it was imported; both restored afterwards. Its progress bars are off meanwhile (the build
    prints a line per dataset)."""
    saved_env = {var: os.environ.get(var) for var in _OFFLINE_VARS}
    saved_flags = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    bars = datasets.is_progress_bar_enabled()
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved_flags
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
