"""The run configuration: one typed dataclass, its defaults, validation and a stable hash."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, fields
from typing import Any

from uqflow.errors import ConfigError, short
from uqflow.prompts import BRIEF_INSTRUCTION, PromptOptions


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one model x dataset run (logged whole as MLflow params).

    Construction checks types and ranges only; names (model, dataset, backend, judge, abstention
    rule) are checked where they are registered, by ``checks.check`` before a run starts."""

    model: str = "SmolLM2-135M-Instruct"  # registry name (`uqflow models`) or a local model directory
    model_registry: str = ""  # YAML file of extra model entries ("" = $UQFLOW_MODEL_REGISTRY or none)
    dataset: str = "trivia_mini"  # registry name (`uqflow datasets`) or a local .jsonl/.json/.parquet
    num_samples: int = 400  # questions evaluated, drawn with `seed`; the study's 400 (all, if fewer)
    num_few_shot: int = 5  # few-shot blocks, drawn from a pool disjoint from the evaluated questions
    seed: int = 10  # fixes the question sample, the few-shot draw and the bootstrap
    max_new_tokens: int = 50  # brief answers; the study's grid used 150
    batch_size: int = 0  # 0 = automatic; changes only speed, except for bitsandbytes' 8bit/4bit models
    #   (uqflow.models.loading.batch_dependence), whose answers depend on the batches
    backend: str = "auto"  # generation engine: auto (a served model's server, else hf) | hf | vllm | openai
    device: str = "auto"  # auto | cpu | cuda[:N] | mps
    instruction: str = BRIEF_INSTRUCTION  # the study's grid used prompts.SHORT_PHRASE_INSTRUCTION
    use_context: bool = True  # include the passage for datasets that have one (SQuAD, SVAMP)
    instruction_per_block: bool = False  # repeat the instruction before every few-shot block
    chat_template: bool = True  # instruct models get the prompt as one chat turn
    correctness: str = "f1"  # judge (scoring/judges.py): f1 (the study's), em, contains, alias, rouge_l, llm:<model>
    judges: str = ""  # more judges whose verdicts are stored beside `correctness`'s, comma-separated
    #   (e.g. em,contains,llm:SmolLM2-135M-Instruct), so the report can show how much the ranking of
    #   the measures depends on the judge; `correctness` stays the one the metrics use
    correctness_threshold: float = 0.0  # 0 = the judge's default (f1 0.5, rouge_l 0.3)
    answerable_only: bool = True  # SQuAD v2: evaluate answerable questions only, as the study did
    abstention: str = "official"  # with answerable_only=false: which answers to an unanswerable question
    #   count as abstaining: official (the empty answer, as SQuAD v2's own evaluation) | lenient
    similarity: str = "all-MiniLM-L6-v2"  # similarity model for RW-G-NLL's token relevance
    n_bootstrap: int = 1000  # resamples for AUROC intervals
    num_generations: int = 0  # sampled answers per question beside the greedy one, for the sampling-based
    #   measures (semantic entropy, predictive entropy, p(True)); 0 = off. The study protocol's choice: 10
    temperature: float = 1.0  # sampling temperature of those answers
    entailment: str = "deberta-large-mnli"  # the judge that clusters sampled answers by meaning:
    #   deberta-large-mnli (the semantic-entropy paper's, from the hub) | llm:<registry model> (offline)
    batch_compositions: int = 1  # for a model whose answers depend on the batch (bitsandbytes' 8bit/4bit):
    #   answer the questions again in this many batch compositions in all (the default one, then
    #   seeded shuffles of the question order) and log the spread of accuracy and AUROC over them;
    #   1 = the default composition only. Batch-invariant models ignore it
    most_likely: str = "greedy"  # the answer that is judged and scored: greedy (G-NLL's, the default) |
    #   sampled (one sample at temperature 0.1, as the semantic-entropy reference code takes it)
    p_true_few_shot: int = 0  # p(True) examples from the few-shot pool (answered, sampled and judged
    #   first, as the reference code's few-shot p(True)); 0 = zero-shot p(True). Needs num_generations
    strict_entailment: bool = False  # same meaning = entailment both ways (else: no contradiction and
    #   not both neutral, as the semantic-entropy code's default)
    pair_similarity: str = "auto"  # the similarity model of the pairwise record that SAR, CoCoA and
    #   greedy-vs-sample dissimilarity read: auto = SAR's cross-encoder/stsb-roberta-large where it can be
    #   loaded (local cache or hub), else the bundled all-MiniLM-L6-v2 (the run logs which, as
    #   pair_similarity_model); or any similarity model name

    def __post_init__(self) -> None:
        _raise_together(problems(self.to_dict()))

    @property
    def judge_names(self) -> tuple[str, ...]:
        """The extra judges of ``judges``, in order (the run's own ``correctness`` judge left out)."""
        return tuple(j for j in (j.strip() for j in self.judges.split(",")) if j and j != self.correctness)

    @property
    def prompt_options(self) -> PromptOptions:
        return PromptOptions(self.instruction, self.use_context, self.instruction_per_block, self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, dataset_content: str | None = None, extra: dict[str, Any] | None = None) -> str:
        """Stable hash of every field that can change results (batch size, device and backend do not
        change an unquantized model's answers, so two runs differing only there share a hash).
        ``dataset_content``, a fingerprint of a local dataset file's questions, makes an edited file
        a different run; ``extra`` adds fields that change results for one model only (the batch
        size of a bitsandbytes model)."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        if self.answerable_only:  # abstention judges unanswerable questions only, which are left out
            d.pop("abstention")
        if not self.num_generations:  # sampling's settings change nothing when nothing is sampled,
            for k in SAMPLING_FIELDS:  # and runs from before sampling existed keep their hash
                d.pop(k)
        for k, default in OMITTED_AT_DEFAULT.items():  # settings added later: runs from before keep their hash
            if d.get(k) == default:
                d.pop(k)
        if dataset_content:
            d["dataset_content"] = dataset_content
        d.update(extra or {})  # fields that change results for this model only (batch_size, quantized)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_strings(cls, values: dict[str, Any]) -> RunConfig:
        """Build from string values (CLI ``--set``, MLproject parameters), coercing each to its type."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        found: list[str] = []  # every unknown name, unreadable value and value out of range, told together
        for key, raw in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else "."
                found.append(f"unknown setting {short(key)}{hint} Known: {', '.join(known)}")
                continue
            try:
                kwargs[key] = _coerce(key, known[key].type, raw)
            except ConfigError as e:
                found.append(str(e))
        if found:  # the values that were read are checked too (the others keep their defaults)
            _raise_together(found + problems({**cls().to_dict(), **kwargs}))
        return cls(**kwargs)


def settings_help() -> list[tuple[str, str, str]]:
    """(name, default, meaning) of every setting, read from RunConfig's own declaration: each
    field's trailing comment and the comment lines that continue it (``#   ...``), so that
    ``uqflow run --help`` lists what the code declares rather than a copy that can drift."""
    import inspect
    import io
    import tokenize

    notes: dict[str, list[str]] = {}
    current = None
    source = inspect.getsource(RunConfig)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in RunConfig.__dataclass_fields__:
            current = tok.string
        elif tok.type == tokenize.COMMENT and current is not None:
            text = tok.string.lstrip("#").strip()
            if tok.start[1] == 4 and not tok.string.startswith("#   "):  # a comment line of its own: not a field's
                continue
            notes.setdefault(current, []).append(text)
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string == "def":
            break
    for name, (lo, hi, _) in BOUNDS.items():  # the range a value is checked against, as the error says it
        notes.setdefault(name, []).append(f"(range {'(' if name in OPEN_BELOW else '['}{lo}, {hi}])")
    defaults = RunConfig()
    return [(f.name, repr(getattr(defaults, f.name)) if isinstance(getattr(defaults, f.name), str)
             else str(getattr(defaults, f.name)), " ".join(notes.get(f.name, []))) for f in fields(RunConfig)]


def problems(values: dict[str, Any]) -> list[str]:
    """What is wrong with a configuration's ``values`` (every field), each problem once: a number
    outside its :data:`BOUNDS`, and the rules that tie settings together."""
    found = []
    for name, (lo, hi, why) in BOUNDS.items():
        v = values[name]
        if not (lo < v if name in OPEN_BELOW else lo <= v) or not v <= hi:  # NaN fails both
            found.append(f"{name} must lie in {'(' if name in OPEN_BELOW else '['}{lo}, {hi}] ({why}), got {v}")
    k = values["num_generations"]
    if k == 1 or not 0 <= k <= MAX_GENERATIONS:
        found.append(f"num_generations must be 0 (no sampling) or between 2 and {MAX_GENERATIONS}, got {k}"
                     + (": with one sampled answer semantic entropy and the number of sets are constant" if k == 1 else ""))
    if not _DEVICE.fullmatch(values["device"]):
        found.append(f"unknown device {short(values['device'])}. Known: auto, cpu, cuda, cuda:N, mps")
    if values["most_likely"] not in MOST_LIKELY:
        found.append(f"most_likely must be one of {', '.join(MOST_LIKELY)}, got {short(values['most_likely'])}")
    if values["batch_compositions"] > 1 and values["most_likely"] != "greedy":
        # the spread is measured by answering greedily again in other batches; a sampled answer's
        # spread would mix the batch's effect with the sampler's, so the two are not combined
        found.append("batch_compositions measures how the greedy answers move with the batch; with most_likely="
                     f"{values['most_likely']} the judged answer is a sample: leave batch_compositions at 1, "
                     "or use most_likely=greedy")
    if values["p_true_few_shot"] and not k:
        found.append("p_true_few_shot needs sampled answers to show as brainstorm: set num_generations (2 or more) too")
    judges = values["judges"]
    listed = [j.strip() for j in judges.split(",")] if judges.strip() else []
    if "" in listed or len(set(listed)) != len(listed):
        found.append(f"judges must be judge names separated by commas, each once, got {short(judges)}")
    if not values["similarity"].strip():
        found.append("similarity must name a similarity model, e.g. all-MiniLM-L6-v2 (the default)")
    if not values["pair_similarity"].strip():
        found.append("pair_similarity must name a similarity model, or auto (the default)")
    return found


def _raise_together(found: list[str]) -> None:
    """One ConfigError naming every problem found (one line when there is one)."""
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} settings cannot be used:\n" + "\n".join(f"  - {p}" for p in found))


NON_RESULT_FIELDS = {"batch_size", "device", "backend"}
#: settings added after runs were first recorded, left out of the hash while at their default
OMITTED_AT_DEFAULT = {"judges": "", "most_likely": "greedy", "p_true_few_shot": 0, "batch_compositions": 1,
                      "pair_similarity": "auto"}
MAX_BATCH_COMPOSITIONS = 16
MOST_LIKELY = ("greedy", "sampled")
#: the reference code's few-shot p(True) uses 20 examples; more rarely fit a context
MAX_P_TRUE_FEW_SHOT = 64
SAMPLING_FIELDS = ("num_generations", "temperature", "entailment", "strict_entailment", "pair_similarity")
#: sampled answers per question: the measures of sampled answers are studied with 5-20 (the
#: semantic-entropy paper's 10); a question's answers share one batch, so memory bounds it too
#: (checks.check compares it with the machine's before a model loads)
MAX_GENERATIONS = 256
#: longer than any context in the registry (128k); a model's own context is checked before a run
MAX_NEW_TOKENS = 131072
#: a run holds every question's record (prompt, tokens, scores) in memory; ten million is more
#: questions than any QA dataset has, so the bound refuses only a typo
MAX_QUESTIONS = 10_000_000
#: the studies this follows use 0-10 few-shot blocks (G-NLL's 5); 256 TriviaQA blocks (~25 tokens
#: each) nearly fill SmolLM2's 8,192-token context and 256 SQuAD blocks with their passages (~200
#: tokens each) pass Gemma 3's 32,768 (the fit itself is checked once the model's tokenizer is loaded)
MAX_FEW_SHOT = 256
#: a batch is one padded tensor and its key/value cache: SmolLM2-135M's cache is ~23 KB a token in
#: bfloat16, so 4,096 rows of 1,000-token few-shot prompts already hold ~94 GB, more than an
#: accelerator has (0 lets the engine choose from the device's memory)
MAX_BATCH_SIZE = 4096
#: the bootstrap resamples all answers at once per measure (scipy.stats.bootstrap, vectorized):
#: at 400 answers 100,000 resamples held 3 GB and took 14 s a measure, and memory grows with the
#: answers too; at 10,000 the Monte Carlo error of a 95% percentile bound is below 0.001 AUROC at
#: 400 answers, under the third decimal the report prints
MAX_BOOTSTRAP = 10_000
#: a 32-bit signed seed is what every library a run seeds accepts (NumPy's legacy seeding and
#: vLLM's engine take 32 bits), with room for the fixed offsets added to it for the other streams
MAX_SEED = 2**31 - 1
#: at 10 the sampling distribution is already close to uniform over the vocabulary: the answers are noise
MAX_TEMPERATURE = 10
#: the range of every numeric setting, (lowest, highest, why) as the error message says it;
#: checked when a configuration is built (``--set``, a grid file, MLproject parameters), before
#: anything loads. num_generations, whose range has a hole at 1, is checked beside them.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "num_samples": (1, MAX_QUESTIONS, "questions evaluated; no dataset has more"),
    "num_few_shot": (0, MAX_FEW_SHOT, "few-shot blocks; the study uses 5, and longer prompts outgrow most contexts"),
    "seed": (0, MAX_SEED, "a 32-bit seed, which every library the run seeds accepts"),
    "max_new_tokens": (1, MAX_NEW_TOKENS, "no model answers longer"),
    "batch_size": (0, MAX_BATCH_SIZE, "0 = automatic; a larger batch's cache fits no accelerator"),
    "correctness_threshold": (0, 1, "0 = the judge's default"),
    "n_bootstrap": (0, MAX_BOOTSTRAP, "resamples for AUROC intervals, 0 = none; more take gigabytes and "
                                      "change no digit the report prints"),
    "temperature": (0, MAX_TEMPERATURE, "sampling temperature; above 10 the answers are noise"),
    "batch_compositions": (1, MAX_BATCH_COMPOSITIONS, "each composition answers every question again"),
    "p_true_few_shot": (0, MAX_P_TRUE_FEW_SHOT, "p(True) examples; more rarely fit a context"),
}
#: settings whose lowest value is excluded: a temperature of 0 is greedy decoding, not sampling
OPEN_BELOW = {"temperature"}
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
