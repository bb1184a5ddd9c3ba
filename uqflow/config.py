"""The run configuration: one typed dataclass, its defaults, validation and a stable hash."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from uqflow.errors import ConfigError, UqflowError, short
from uqflow.generation import ENGINES
from uqflow.scoring.judges import ABSTENTION_RULES, JUDGES, is_judge_name
from uqflow.prompts import BRIEF_INSTRUCTION, PromptOptions


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one model x dataset run (logged whole as MLflow params)."""

    model: str = "SmolLM2-135M-Instruct"  # registry name (`uqflow models`) or a local model directory
    model_registry: str = ""  # YAML file of extra model entries ("" = $UQFLOW_MODEL_REGISTRY or none)
    dataset: str = "trivia_mini"  # registry name (`uqflow datasets`) or a local .jsonl/.json/.parquet
    num_samples: int = 400  # questions evaluated, drawn with `seed`; the study's 400 (all, if fewer)
    num_few_shot: int = 5  # few-shot blocks, drawn from a pool disjoint from the evaluated questions
    seed: int = 10  # fixes the question sample, the few-shot draw and the bootstrap
    max_new_tokens: int = 50  # brief answers; the study's grid used 150
    batch_size: int = 0  # 0 = automatic; never changes results, only speed
    backend: str = "hf"  # generation engine: hf | vllm
    device: str = "auto"  # auto | cpu | cuda[:N] | mps
    instruction: str = BRIEF_INSTRUCTION  # the study's grid used prompts.SHORT_PHRASE_INSTRUCTION
    use_context: bool = True  # include the passage for datasets that have one (SQuAD, SVAMP)
    instruction_per_block: bool = False  # repeat the instruction before every few-shot block
    chat_template: bool = True  # instruct models get the prompt as one chat turn
    correctness: str = "f1"  # judge (scoring/judges.py): f1 (the study's), em, alias, rouge_l, llm:<model>
    correctness_threshold: float = 0.0  # 0 = the judge's default (f1 0.5, rouge_l 0.3)
    answerable_only: bool = True  # SQuAD v2: evaluate answerable questions only, as the study did
    abstention: str = "official"  # with answerable_only=false: which answers to an unanswerable question
    #   count as abstaining: official (the empty answer, as SQuAD v2's own evaluation) | lenient
    similarity: str = "all-MiniLM-L6-v2"  # similarity model for RW-G-NLL's token relevance
    n_bootstrap: int = 1000  # resamples for AUROC intervals

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.num_few_shot < 0:
            raise ConfigError(f"num_few_shot must be 0 or more, got {self.num_few_shot}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ConfigError(f"max_new_tokens must lie in [1, {MAX_NEW_TOKENS}] (no model answers longer), "
                              f"got {self.max_new_tokens}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be 0 (automatic) or a positive number, got {self.batch_size}")
        if not 0.0 <= self.correctness_threshold <= 1.0:
            raise ConfigError(f"correctness_threshold must lie in [0, 1] (0 = the judge's default), got {self.correctness_threshold}")
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be 0 or more, got {self.n_bootstrap}")
        if self.backend not in ENGINES:
            raise ConfigError(f"unknown backend {short(self.backend)}. Known: {', '.join(ENGINES)}")
        if self.abstention not in ABSTENTION_RULES:
            raise ConfigError(f"unknown abstention rule {short(self.abstention)}. Known: {', '.join(ABSTENTION_RULES)}")
        if not is_judge_name(self.correctness):
            raise ConfigError(f"unknown correctness judge {short(self.correctness)}. Known: {', '.join(JUDGES)}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"unknown device {short(self.device)}. Known: auto, cpu, cuda, cuda:N, mps")
        if not self.similarity.strip():
            raise ConfigError("similarity must name a similarity model, e.g. all-MiniLM-L6-v2 (the default)")

    @property
    def prompt_options(self) -> PromptOptions:
        return PromptOptions(self.instruction, self.use_context, self.instruction_per_block, self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, dataset_content: str | None = None) -> str:
        """Stable hash of every field that can change results (batch size, device and backend do not
        change the answers, so two runs differing only there share a hash). ``dataset_content``, a
        fingerprint of a local dataset file's questions, makes an edited file a different run."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        if self.answerable_only:  # abstention judges unanswerable questions only, which are left out
            d.pop("abstention")
        if dataset_content:
            d["dataset_content"] = dataset_content
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_strings(cls, values: dict[str, Any]) -> RunConfig:
        """Build from string values (CLI ``--set``, MLproject parameters), coercing each to its type."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ConfigError(f"unknown setting {short(key)}. Known: {', '.join(known)}")
            kwargs[key] = _coerce(key, known[key].type, raw)
        return cls(**kwargs)


NON_RESULT_FIELDS = {"batch_size", "device", "backend"}
#: longer than any context in the registry (128k); a model's own context is checked before a run
MAX_NEW_TOKENS = 131072
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


_PY_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _coerce(key: str, typ: Any, raw: Any) -> Any:
    name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if not isinstance(raw, str):  # from YAML: already typed, so only checked
        ok = isinstance(raw, _PY_TYPES.get(name, (object,))) and not (name != "bool" and isinstance(raw, bool))
        if not ok:
            raise ConfigError(f"{key} must be of type {name}, got {short(raw)}")
        return float(raw) if name == "float" else raw
    try:
        if name == "int":
            f = float(raw)  # MLflow passes numbers it was given as floats ("50.0")
            if not f.is_integer():
                raise ValueError
            return int(f)
        if name == "float":
            return float(raw)
        if name == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
    except ValueError:
        raise ConfigError(f"{key} must be {'a whole number' if name == 'int' else 'a number' if name == 'float' else 'true or false'}, got {short(raw)}") from None
    return raw


#: bounds on a user's YAML file (grids and model registries are a few hundred bytes of plain data)
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_NODES = 10_000  # values after aliases are expanded, so an alias bomb stops here
MAX_YAML_DEPTH = 50


class _YamlTooLarge(Exception):
    """A YAML document past one of the bounds: ``(what is wrong, the way out)``."""

    def __init__(self, problem: str, way_out: str = ", so write each value out (a few anchors and aliases for "
                 "shared settings are fine)"):
        super().__init__(problem, way_out)


@functools.lru_cache(maxsize=1)
def _bounded_loader():
    """``safe_load``'s loader, bounded: composing stops past MAX_YAML_NODES nodes or MAX_YAML_DEPTH
    levels, and a document whose aliases expand past MAX_YAML_NODES values is refused before a
    single value is constructed (so an alias bomb costs milliseconds, not gigabytes)."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self._composed = 0
            self._depth = 0

        def compose_node(self, parent, index):
            self._composed += 1
            self._depth += 1
            try:
                if self._composed > MAX_YAML_NODES:
                    raise _YamlTooLarge(f"too many YAML aliases or nodes (more than {MAX_YAML_NODES:,})")
                if self._depth > MAX_YAML_DEPTH:
                    raise _YamlTooLarge(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)", " a few levels deep")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return self.construct_document(node)

    return BoundedSafeLoader


def _check_expanded_size(root: Any) -> None:
    """Refuse a composed YAML graph that, once every alias is expanded (as ``construct_document``
    would), holds more than MAX_YAML_NODES values or MAX_YAML_BYTES characters of text, or that
    holds a recursive alias (an infinite value). Each node is sized once (aliases share their
    node), iteratively, so the check itself is cheap."""
    import yaml

    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once expanded
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()  # the nodes being sized: the current node's ancestors
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        if children_done:
            open_.discard(key)
            values = 1 + sum(size[id(c)][0] for c in children)
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            chars = own + sum(size[id(c)][1] for c in children)
            if values > MAX_YAML_NODES:
                raise _YamlTooLarge(f"too many YAML aliases or nodes (more than {MAX_YAML_NODES:,})")
            if chars > MAX_YAML_BYTES:
                raise _YamlTooLarge(f"YAML aliases expand to more than {MAX_YAML_BYTES:,} characters of text")
            size[key] = (values, chars)
            continue
        if key in size:
            continue
        if key in open_:  # an alias inside its own anchor: the value would never end
            raise _YamlTooLarge("a YAML alias refers to the value that contains it (a recursive value)",
                                ", so an alias may only repeat a value defined before it")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def read_yaml(path: Path, kind: str, error: type[UqflowError]) -> Any:
    """The data in a user's YAML file (a grid or a model registry), read with ``safe_load``'s
    constructors: a tag that would construct an object or run code (``!!python/object``,
    ``!!python/name``, ...) is refused, as is a file past MAX_YAML_BYTES, a document past
    MAX_YAML_NODES values once its aliases are expanded (an alias bomb) or nested past
    MAX_YAML_DEPTH levels; every problem is an ``error`` naming the file."""
    import yaml

    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # never more, whatever the file (or device) holds
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: larger than {MAX_YAML_BYTES // 1024 ** 2} MiB; a {kind} is a short list of names "
                    "and settings, so check that this is the file you meant")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass
    except _YamlTooLarge as e:
        problem, way_out = e.args
        raise error(f"{path}: {problem}; {kind}s are plain data{way_out}") from None
    except RecursionError:  # the bounds above stop nesting first; this is the backstop
        raise error(f"{path}: nested too deeply; {kind}s are plain data a few levels deep") from None
    except yaml.constructor.ConstructorError as e:
        where = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
        raise error(f"{path}{where}: not valid YAML for a {kind} ({e.problem}): {kind}s are data, so tags that "
                    "construct objects or run code are refused") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
