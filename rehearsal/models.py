"""Tiny stand-ins for the reference study's hub models, in their real architectures.

Each stand-in keeps what distinguishes its model's ``config.json``: the architecture class, grouped-
query attention (the ratio of query to key/value heads), RoPE base and scaling, the context length,
tied or separate embeddings, the sliding-window settings, the vocabulary size and special token ids.
Only the widths and depths shrink (2 layers, hidden size 96-128), so a model loads and answers in
seconds on a CPU.

Random weights never stop: they would leave the stop-sequence and EOS paths untested. So each model
is trained briefly (1.5-4 minutes on a 2-core CPU) on the bundled questions rendered exactly as the
study grid prompts them (its few-shot count, instruction and passage settings, read from
grids/multi_family.yaml; the instruct model's chat template), with the loss on the answer and what ends it (a newline for base
models, EOS after an instruct model's turn). The weights mean nothing as a language model: the
rehearsal's AUROCs are no finding about the real models.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the reference study's grid: its models are the ones stood in for, its settings the prompts trained on
STUDY_GRID = Path(__file__).resolve().parents[1] / "grids" / "multi_family.yaml"
#: hidden size of every stand-in, about: wide enough to learn to answer in a few hundred steps, small enough
#: to train them in minutes on a CPU (the real models: 1536-4096)
WIDTH = 128
HEAD_DIM = 32  # Llama and Mistral (the real models: 64 for Llama 3.2, 128 for the others)


@dataclass(frozen=True)
class StandIn:
    """One hub repository's stand-in: its real id, tokenizer kind and config (real settings, small sizes)."""

    repo: str
    tokenizer: str  # a kind of rehearsal.tokenizers
    instruct: bool
    config: dict[str, Any]
    generation_config: dict[str, Any] = field(default_factory=dict)


def _llama(heads: int, kv: int, **real: Any) -> dict[str, Any]:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-5, "initializer_range": 0.02,
            "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": HEAD_DIM * heads,
            "head_dim": HEAD_DIM, "intermediate_size": 4 * HEAD_DIM * heads, "num_hidden_layers": 2, "vocab_size": 128256,
            "bos_token_id": 128000, "eos_token_id": 128001, "rope_theta": 500000.0,
            **real}


def _qwen2(heads: int, kv: int, **real: Any) -> dict[str, Any]:
    head_dim = 8 * (WIDTH // heads // 8)  # a multiple of 8 (fast attention kernels); Qwen2 derives it from hidden_size / heads
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "initializer_range": 0.02, "num_attention_heads": heads,
            "num_key_value_heads": kv, "hidden_size": head_dim * heads, "intermediate_size": 4 * head_dim * heads,
            "num_hidden_layers": 2, "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643,
            "rope_theta": 1000000.0, "max_position_embeddings": 131072, "use_sliding_window": False,
            "sliding_window": 131072, "max_window_layers": 2, **real}


def _mistral(**real: Any) -> dict[str, Any]:
    return {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "initializer_range": 0.02, "num_attention_heads": 4, "num_key_value_heads": 1,
            "hidden_size": 4 * HEAD_DIM, "head_dim": HEAD_DIM, "intermediate_size": 14 * HEAD_DIM, "num_hidden_layers": 2,
            "vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "sliding_window": None, "tie_word_embeddings": False,
            **real}


_LLAMA3_GEN = {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True, "temperature": 0.6, "top_p": 0.9}
_QWEN_GEN = {"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False, "max_new_tokens": 2048}
_MISTRAL_GEN = {"bos_token_id": 1, "eos_token_id": 2}

#: the stand-ins, by hub id. The real models' query/key-value heads: Llama-3.2-1B 32/8, Llama-3-8B
#: 32/8, Qwen2.5-1.5B 12/2, Qwen2.5-7B 28/4, Mistral-7B-v0.3 32/8: the ratios are kept.
STAND_INS: dict[str, StandIn] = {s.repo: s for s in [
    StandIn("meta-llama/Llama-3.2-1B", "llama-3.2", False, _llama(
        4, 1, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}), _LLAMA3_GEN),
    StandIn("meta-llama/Meta-Llama-3-8B", "llama-3", False, _llama(
        4, 1, max_position_embeddings=8192, tie_word_embeddings=False), {**_LLAMA3_GEN, "max_length": 4096}),
    StandIn("Qwen/Qwen2.5-1.5B", "qwen2.5", False, _qwen2(6, 1, tie_word_embeddings=True), _QWEN_GEN),
    StandIn("Qwen/Qwen2.5-7B", "qwen2.5", False, _qwen2(7, 1, tie_word_embeddings=False, vocab_size=152064), _QWEN_GEN),
    StandIn("mistralai/Mistral-7B-v0.3", "mistral-v0.3", False, _mistral(), _MISTRAL_GEN),
    StandIn("mistralai/Mistral-7B-Instruct-v0.3", "mistral-v0.3-instruct", True, _mistral(), _MISTRAL_GEN),
]}


def recipe(stand_in: StandIn) -> int:
    """How ``stand_in`` is trained, as a number a cache records with it: a stand-in built by another
    recipe is built again. 1: answers after the prompt; 2 (instruct models): the answer's turn as the
    chat template renders it (:func:`answer_turn`; 1 trained "[/INST]Leo Tolstoy</s>" without the
    template's space)."""
    return 2 if stand_in.instruct else 1


def study_cell():
    """The configuration of the study grid's first cell: its prompt protocol and few-shot settings,
    which every cell shares."""
    from uqflow.grid import load_grid

    return load_grid(STUDY_GRID).cells()[0]


Pair = tuple[list[int], int]  # token ids, and how many of them are the prompt


def training_pairs(tokenizer, instruct: bool, seed: int = 0) -> dict[str, list[Pair]]:
    """(token ids, number of prompt tokens) for every answerable bundled question, prompted as the
    study prompts it; the ids after the prompt are the answer and its end (a newline, or the instruct
    turn's EOS). Three pools: each dataset's questions without shots (``trivia_mini``, ``squad_mini``;
    short and cheap, most steps learn the answers from these) and all of them with 1 to 5 shots drawn
    from the train split (``shots``, the form the study prompts in)."""
    from uqflow.data import load_dataset
    from uqflow.prompts import draw_few_shot

    cell = study_cell()
    opts, shots_max = cell.prompt_options, cell.num_few_shot
    rng = random.Random(seed)
    pools: dict[str, list[Pair]] = {"trivia_mini": [], "squad_mini": [], "shots": []}
    for name in ("trivia_mini", "squad_mini"):
        ds = load_dataset(name)
        for ex in [*ds.examples, *ds.few_shot_pool]:
            if not (ex.answerable and ex.references):
                continue  # greedy decoding takes the mode: trained on abstentions, a tiny model abstains always
            answer = ex.references[0]
            shots = [s for s in draw_few_shot(ds.few_shot_pool, shots_max + 1, rng.randrange(10**6)) if s.id != ex.id]
            pools[name].append(_pair(tokenizer, ex, [], answer, instruct, opts))
            k = rng.randint(1, shots_max)
            pools["shots"].append(_pair(tokenizer, ex, shots[:k], answer, instruct, opts))
    return pools


def answer_turn(tokenizer, messages: list[dict[str, str]], prompt: str, answer: str) -> str:
    """``answer`` as the chat template renders an assistant turn after ``prompt`` (``messages``
    rendered with the generation prompt), up to and including the EOS that ends it: Mistral's
    template gives " Leo Tolstoy</s>" after "[/INST]", so the first answer token is SentencePiece's
    word start ("▁Leo"), as the real model's answers and the prompt's own example turns begin."""
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders a conversation with an answer under another prefix than its "
                         "generation prompt; the answer's turn cannot be told apart")
    turn = full[len(prompt):]
    cut = turn.find(tokenizer.eos_token) if tokenizer.eos_token else -1
    return turn if cut < 0 else turn[:cut + len(tokenizer.eos_token)]


def _pair(tokenizer, ex, shots, answer: str, instruct: bool, opts) -> Pair:
    """The question prompted as the study prompts it, and after it the answer as the model is to
    give it: a base model's " answer" and the newline that stops it, an instruct model's turn as its
    chat template renders it (:func:`answer_turn`)."""
    from uqflow.prompts import build_messages, render

    prompt, special = render(ex, shots, tokenizer, instruct, opts)
    if not instruct:
        text = prompt + " " + answer + "\n"
    elif special:  # an instruct model prompted without its chat template
        text = prompt + answer + tokenizer.eos_token
    else:
        text = prompt + answer_turn(tokenizer, build_messages(ex, shots, opts), prompt, answer)
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    n = len(prompt_ids)
    while n and ids[:n] != prompt_ids[:n]:  # a token merged across the boundary belongs to the answer
        n -= 1
    return ids, n


#: the pools of one round of training steps, with their batch sizes: batches of similar lengths
#: (TriviaQA's bare questions are 40 tokens, SQuAD's passages 150-300, few-shot prompts up to 900)
SCHEDULE = (("trivia_mini", 32), ("trivia_mini", 32), ("squad_mini", 16), ("shots", 8))


def train(model, pools: dict[str, list[Pair]], steps: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """AdamW on the answer tokens only, in rounds of ``SCHEDULE``; returns the loss of each step.
    Logits are computed at the answer positions alone: over a 32k-152k vocabulary the output layer
    is most of a step's cost."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)
    head = model.get_output_embeddings()
    losses = []
    model.train()
    for step in range(steps):
        name, batch = SCHEDULE[step % len(SCHEDULE)]
        chosen = rng.sample(pools[name], min(batch, len(pools[name])))
        width = max(len(ids) for ids, _ in chosen)
        x = torch.zeros(len(chosen), width, dtype=torch.long)
        mask = torch.zeros(len(chosen), width, dtype=torch.long)
        target = torch.full((len(chosen), width), -100, dtype=torch.long)
        for row, (ids, n) in enumerate(chosen):
            x[row, width - len(ids):] = torch.tensor(ids)  # left padding, as the engine batches
            mask[row, width - len(ids):] = 1
            # position t predicts token t+1: the answer tokens ids[n:] are predicted from n-1 on
            target[row, width - len(ids) + n - 1: width - 1] = torch.tensor(ids[n:])
        hidden = model.model(input_ids=x, attention_mask=mask).last_hidden_state
        at = target != -100
        loss = torch.nn.functional.cross_entropy(head(hidden[at]), target[at])
        opt.zero_grad(set_to_none=False)  # reused buffers: allocating 16M-row gradients each step cost a third
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


#: the share of answers a trained stand-in must end with its stop token within STOP_WITHIN tokens, and
#: how many more rounds of half the steps it may train to get there
STOP_SHARE, STOP_WITHIN, EXTRA_ROUNDS = 0.9, 16, 2


def stop_share(model, pools: dict[str, list[Pair]], n: int = 16) -> float:
    """The share of the first ``n`` few-shot prompts (the form the study prompts in) that the model,
    greedily, answers and ends with the token its training answers end with (the newline, or EOS)
    within STOP_WITHIN tokens."""
    import torch

    pairs = pools["shots"][:n]
    ends = sorted({ids[-1] for ids, _ in pools["shots"]})
    stopped = 0
    with torch.inference_mode():
        for ids, prompt_len in pairs:
            x = torch.tensor([ids[:prompt_len]])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=STOP_WITHIN, do_sample=False,
                                 eos_token_id=ends, pad_token_id=ends[0])
            stopped += any(t in ends for t in out[0, prompt_len:].tolist())
    return stopped / max(len(pairs), 1)


def build_model(stand_in: StandIn, tokenizer_dir: Path, out: Path, steps: int = 120, seed: int = 0) -> dict[str, Any]:
    """Train ``stand_in`` and save it into ``out`` as its hub repository has it (bf16 safetensors,
    config.json, generation_config.json); returns what was measured (loss before and after)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = dict(stand_in.config)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    pools = training_pairs(tokenizer, stand_in.instruct, seed)
    losses = train(model, pools, steps, seed=seed)
    # where training stops decides whether a stand-in ends in a loop ("1999999..." to the length
    # limit) or stops: measured on Mistral-Instruct, seed 0 rambled on 9 of 16 questions after 300
    # steps, seed 1 on none. So a stand-in that does not yet stop trains on until it does.
    rounds, stops = 1, stop_share(model, pools)
    while stops < STOP_SHARE and rounds <= EXTRA_ROUNDS:
        losses += train(model, pools, max(steps // 2, 1), seed=seed + rounds)
        rounds, stops = rounds + 1, stop_share(model, pools)
    model.generation_config = GenerationConfig(**stand_in.generation_config)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)  # config.json then names bfloat16, as the hub's do
    return {"repo": stand_in.repo, "recipe": recipe(stand_in), "parameters": sum(p.numel() for p in model.parameters()),
            "examples": len(pools["shots"]), "loss_first": round(sum(losses[:10]) / 10, 3),
            "loss_last": round(sum(losses[-10:]) / 10, 3), "rounds": rounds, "stops": stops}
