"""A tiny BPE tokenizer with a chat template and a tiny random Llama: fast stand-ins for SmolLM2 in tests."""

from __future__ import annotations

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Does this ECG show atrial fibrillation? yes no sinus rhythm normal ECG 1 2 earlier recent",
              "You are a careful assistant that reads electrocardiograms. system user assistant"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def tiny_llm(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                        tie_word_embeddings=True))


def older_layout_copy(folder, out):
    """A copy of a model folder in the layout before transformers' (what training runs, and the default until it
    was converted, hold): config.json nesting the parts under "config", a file per part, the LoRA adapter under
    PEFT's names, labels.json and image_encoder.json; the processor files as they are."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from ecgllm.models.model_folder import PARTS, WEIGHTS_FILE

    folder, out = Path(folder), Path(out)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(WEIGHTS_FILE, "config.json", "generation_config.json"))
    config = json.loads((folder / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({"config": config["model"], "name": config.get("name"),
                                                 "ecgllm_version": config.get("ecgllm_version", ""),
                                                 "shipped_from": config.get("shipped_from")}))
    if config.get("label_vocab"):
        (out / "labels.json").write_text(json.dumps(config["label_vocab"]))
    if config.get("image_encoder"):
        (out / "image_encoder.json").write_text(json.dumps(config["image_encoder"]))
    state = load_file(folder / WEIGHTS_FILE)
    for part in PARTS:
        own = {k.removeprefix(f"{part}."): v for k, v in state.items() if k.startswith(f"{part}.")}
        if own:
            save_file(own, out / f"{part}.safetensors")
    adapter = {k.removeprefix("llm.").replace(".default.", "."): v for k, v in state.items() if k.startswith("llm.")}
    if adapter:
        (out / "adapter").mkdir()
        save_file(adapter, out / "adapter/adapter_model.safetensors")
    return out
