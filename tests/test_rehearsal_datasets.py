"""rehearsal.datasets_cache: the bundled mini datasets load offline under their real hub ids.

``datasets`` reads HF_HOME when it is imported, so every load runs in a fresh interpreter whose only
Hugging Face settings are HF_HOME (the built cache) and offline mode.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rehearsal import datasets_cache
from rehearsal.datasets_cache import DATASETS, build_dataset_cache
from uqflow.data.datasets import load_dataset, read_records

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "uqflow" / "data" / "files"
SPLITS = ("train", "validation")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(HF_HOME, the lines build_dataset_cache returned) for one build shared by the module."""
    home = tmp_path_factory.mktemp("hf_home")
    return home, build_dataset_cache(home)


def _run(code: str, hf_home: Path, cwd: Path) -> object:
    """Run ``code`` in a fresh interpreter with only HF_HOME and offline mode set for Hugging Face;
    its last line of output, parsed as JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def test_build_lays_out_each_dataset_as_datasets_caches_it(built):
    home, lines = built
    assert len(lines) == len(DATASETS)
    for line, (hub_id, config, stem) in zip(lines, DATASETS.values()):
        sizes = ", ".join(f"{split} {len(read_records(BUNDLED / f'{stem}.{split}.jsonl'))}" for split in SPLITS)
        assert line.startswith(f"{hub_id} (") and sizes in line and "(built)" in line
        namespace, name = hub_id.split("/")
        (folder,) = (home / "datasets" / f"{namespace}___{name}").glob("*/0.0.0/*")
        assert config is None or folder.parts[-3] == config
        assert sorted(p.name for p in folder.iterdir()) == ["dataset_info.json", *(f"{name}-{s}.arrow" for s in SPLITS)]
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["mandarjoshi___trivia_qa", "rajpurkar___squad_v2"]


def test_hub_ids_load_offline_with_the_bundled_records_and_real_features(built, tmp_path):
    home, _ = built
    calls = [(hub_id, config, split) for hub_id, config, _ in DATASETS.values() for split in SPLITS]
    got = _run(
        "import json, datasets\n"
        f"out = []\nfor hub_id, config, split in {calls!r}:\n"
        "    ds = datasets.load_dataset(hub_id, config, split=split)\n"
        "    out.append([len(ds), ds.features.to_dict(), ds[0]])\n"
        "print(json.dumps(out))",
        home, tmp_path)
    for (hub_id, config, split), (rows, features, first) in zip(calls, got):
        stem = next(s for h, _, s in DATASETS.values() if h == hub_id)
        records = read_records(BUNDLED / f"{stem}.{split}.jsonl")
        assert rows == len(records), (hub_id, split)
        assert features == datasets_cache._FEATURES[hub_id].to_dict(), hub_id
        assert first == records[0][1], (hub_id, split)


def test_project_loads_the_hub_datasets_as_the_bundled_ones(built, tmp_path):
    home, _ = built
    got = _run(
        "import json\nfrom uqflow.data.datasets import load_dataset\nout = {}\n"
        "for name in ('trivia_qa', 'squad'):\n"
        "    d = load_dataset(name)\n"
        "    out[name] = {'origin': dict(d.origin), 'fingerprint': d.fingerprint, 'has_context': d.has_context,\n"
        "                 'examples': [[ex.id, ex.question, ex.context, list(ex.references)] for ex in d.examples],\n"
        "                 'pool': [[ex.id, ex.question, ex.context, list(ex.references)] for ex in d.few_shot_pool]}\n"
        "print(json.dumps(out))",
        home, tmp_path)
    for name, (hub_id, config, stem) in DATASETS.items():
        bundled = load_dataset(stem)  # the same files through the project's own bundled loader
        hub = got[name]
        assert hub["origin"] == {"hub_id": hub_id, "config": config, "split": "validation"}
        assert hub["examples"] == [[ex.id, ex.question, ex.context, list(ex.references)] for ex in bundled.examples]
        assert hub["pool"] == [[ex.id, ex.question, ex.context, list(ex.references)] for ex in bundled.few_shot_pool]
        assert (hub["fingerprint"], hub["has_context"]) == (bundled.fingerprint, bundled.has_context)


def test_second_build_changes_nothing_and_restores_offline_settings(built, monkeypatch):
    import datasets

    home, _ = built
    before = _snapshot(home)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    lines = build_dataset_cache(home)
    assert all("(already there)" in line for line in lines) and len(lines) == len(DATASETS)
    assert _snapshot(home) == before
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
    assert datasets.config.HF_HUB_OFFLINE is False and datasets.config.HF_DATASETS_OFFLINE is False


def test_module_does_not_import_torch(tmp_path):
    assert _run("import sys, json, rehearsal.datasets_cache\nprint(json.dumps('torch' in sys.modules))",
                tmp_path, tmp_path) is False
