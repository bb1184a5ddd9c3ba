"""The offline rehearsal cache: the reference study's hub models and datasets, where the hub leaves them.

``build(root)`` fills ``root`` as a Hugging Face home folder:

- ``hub/models--<org>--<name>/`` for each model of ``grids/multi_family.yaml`` (``refs/main`` naming a
  snapshot that holds config.json, generation_config.json, model.safetensors and the tokenizer files),
  the layout ``huggingface_hub`` writes and reads; the models are ``rehearsal.models``' stand-ins and
  the tokenizers ``rehearsal.tokenizers``' copies of the real ones;
- ``datasets/`` with TriviaQA rc.nocontext and SQuAD v2 under their hub ids (``rehearsal.datasets_cache``).

With ``HF_HOME=<root> HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`` the study's model and dataset names run
unchanged. Each part is built only when missing (or trained by an earlier recipe,
``rehearsal.models.recipe``); a repository appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from rehearsal.datasets_cache import build_dataset_cache
from rehearsal.models import STAND_INS, build_model, recipe
from rehearsal.tokenizers import build_tokenizer

DEFAULT_STEPS = 300  # 1.5 minutes (Llama-3.2-1B) or more per model on an idle 2-core CPU
MANIFEST = "rehearsal.json"


def environment(root: Path | str) -> dict[str, str]:
    """The variables that make the libraries read ``root`` and nothing else."""
    return {"HF_HOME": str(root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def repo_dir(root: Path, repo: str) -> Path:
    return root / "hub" / ("models--" + repo.replace("/", "--"))


def snapshot(root: Path, repo: str) -> Path | None:
    """The repository's snapshot folder, where refs/main points; None if it is not (fully) there."""
    ref = repo_dir(root, repo) / "refs" / "main"
    if not ref.is_file():
        return None
    folder = repo_dir(root, repo) / "snapshots" / ref.read_text().strip()
    return folder if (folder / "config.json").is_file() else None


def build(root: Path, steps: int = DEFAULT_STEPS, log=print) -> dict:
    """Build what is missing under ``root``; returns the manifest (what each model measured)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_file = root / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {"models": {}}
    for line in build_dataset_cache(root):
        log(line)
    downloads = root / "downloads"  # the npm tarball of the Llama 3 tokenizer, kept for rebuilds
    for repo, stand_in in STAND_INS.items():
        built = manifest["models"].get(repo, {})
        if snapshot(root, repo) is not None and built.get("recipe", 1) == recipe(stand_in):
            log(f"{repo}: already there")
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".building-", dir=root) as tmp:
            files = Path(tmp) / "files"
            build_tokenizer(stand_in.tokenizer, files, downloads)
            measured = build_model(stand_in, files, files, steps=steps)
            _install(root, repo, files)
        measured["seconds"] = round(time.perf_counter() - t0, 1)
        manifest["models"][repo] = measured
        manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
        log(f"{repo}: {measured['parameters'] / 1e6:.1f}M parameters, answer loss {measured['loss_first']} -> "
            f"{measured['loss_last']} in {steps} steps ({measured['seconds']} s)")
    return manifest


def _install(root: Path, repo: str, files: Path) -> None:
    """Move ``files`` into the repository's snapshot named by their content's hash, then point
    refs/main at it: a reader sees the old state or the complete new one."""
    digest = hashlib.sha1()
    for f in sorted(files.iterdir()):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
        f.chmod(0o644)  # safetensors writes its file private; a cache is read by whoever uses it
    files.chmod(0o755)
    commit = digest.hexdigest()
    target = repo_dir(root, repo) / "snapshots" / commit
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(files, target)
    ref = repo_dir(root, repo) / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp_ref = ref.with_suffix(".tmp")
    tmp_ref.write_text(commit)
    os.replace(tmp_ref, ref)
