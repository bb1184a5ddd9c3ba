"""The machine a run ran on, as far as its figures depend on it.

A configuration fixes a run's questions, prompts and batches, and on full precision its answers up
to float rounding. bitsandbytes' int8 and NF4 kernels on a CPU do not: which answers come out
depends on the batch's composition and on the kernels the CPU's instruction set selects (AVX2,
AVX-512, AMX), the number of threads that split the reductions, and the torch, transformers and
bitsandbytes releases. The demo's 8-bit SmolLM2 gave G-NLL AUROC 0.918 and 0.878 on trivia_mini on
two machines whose full-precision runs agreed to three decimals. So every run records these facts
as tags (not params: the configuration hash stays what the configuration is), with a short
fingerprint that tells machines apart, and :func:`machine_dependent` says which runs' figures hold
for their machine only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
from collections.abc import Mapping
from pathlib import Path

from uqflow.errors import ModelLoadError
from uqflow.models.loading import BNB_QUANTIZATIONS, resolve_device

#: the tags a run's machine is recorded in (beside ``torch_version`` and ``transformers_version``,
#: which every run already carries and the fingerprint includes)
DEVICE_TAG = "machine_device"  # cpu, cuda, cuda:1, mps: where the model ran
CPU_TAG = "machine_cpu"  # the CPU's model name and architecture
CPU_FLAGS_TAG = "machine_cpu_flags"  # the vector instruction sets the kernels choose between
CPU_CAPABILITY_TAG = "machine_cpu_capability"  # the kernel level torch picked (DEFAULT, AVX2, AVX512, ...)
GPU_TAG = "machine_gpu"  # on a GPU: its name and compute capability
THREADS_TAG = "machine_threads"  # torch's intra-op threads
BNB_VERSION_TAG = "bitsandbytes_version"
FINGERPRINT_TAG = "machine_fingerprint"  # a hash of all of the above: equal tags, equal machine

#: the CPU flags (/proc/cpuinfo) that select bitsandbytes' and torch's CPU kernels: the vector
#: widths, fused multiply-add, half and bf16 conversions, VNNI dot products and AMX tiles
CPU_FLAG = re.compile(r"^(avx\w*|amx\w*|fma|f16c|sse4_2)$")

#: the facts the fingerprint hashes, in its order; the versions are the run's own tags
FINGERPRINT_FACTS = (DEVICE_TAG, CPU_TAG, CPU_FLAGS_TAG, CPU_CAPABILITY_TAG, GPU_TAG, THREADS_TAG,
                     "torch_version", "transformers_version", BNB_VERSION_TAG)


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (Linux), else nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def machine_facts(device: str = "auto") -> dict[str, str]:
    """This machine's facts for a model on ``device`` (``auto`` as a run resolves it), as tags:
    the CPU (model, architecture, the instruction-set flags of :data:`CPU_FLAG`, torch's kernel
    level), the GPU's name and compute capability where the model runs on one, torch's thread
    count, and the torch, transformers and bitsandbytes versions."""
    import torch
    import transformers

    try:
        device = resolve_device(device)
    except ModelLoadError:  # CUDA asked for and absent: the run stops at its checks, the tags say so
        pass
    info = _cpuinfo()
    cpu = info.get("model name") or platform.processor() or "unknown"
    flags = sorted(f for f in info.get("flags", "").split() if CPU_FLAG.match(f))
    facts = {
        DEVICE_TAG: device, CPU_TAG: f"{cpu}, {platform.machine()}", CPU_FLAGS_TAG: " ".join(flags) or "unknown",
        CPU_CAPABILITY_TAG: str(torch.backends.cpu.get_cpu_capability()),
        THREADS_TAG: str(torch.get_num_threads()),
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        BNB_VERSION_TAG: _version("bitsandbytes"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        facts[GPU_TAG] = f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    return facts


def fingerprint(facts: Mapping[str, str]) -> str:
    """A short tag for a machine: 12 hex digits of SHA-256 over the facts of
    :data:`FINGERPRINT_FACTS` (a missing one counts as empty). Any fact that differs gives another
    fingerprint; runs with one fingerprint ran on machines their figures cannot tell apart."""
    text = "\n".join(f"{key}={facts.get(key, '')}" for key in FINGERPRINT_FACTS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def machine_tags(device: str = "auto") -> dict[str, str]:
    """The tags a run records about its machine: :func:`machine_facts` and their fingerprint."""
    facts = machine_facts(device)
    return {**facts, FINGERPRINT_TAG: fingerprint(facts)}


def machine_dependent(tags: Mapping[str, str]) -> bool:
    """Whether a run's figures hold for its machine only, read from its tags: a model quantized by
    bitsandbytes (``quantization`` 8bit or 4bit) that ran on a CPU, whose int8 and NF4 kernels
    answer differently with the CPU's instruction set, thread count and library versions. A run
    recorded before the machine tags existed counts as on a CPU. Full-precision runs agree across
    machines up to float rounding; a run on a GPU records the GPU (``machine_gpu``) either way."""
    return tags.get("quantization") in BNB_QUANTIZATIONS and tags.get(DEVICE_TAG, "cpu") == "cpu"
