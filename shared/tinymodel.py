"""Tiny random models built locally, for tests and quick local tries (no download).

The tokenizer is a byte-level BPE trained on a few hundred English words at build time, with
Gemma's turn markers as special tokens and a Gemma-style chat template, so tokenization and chat
rendering take the same code paths as the real model. The network is a Gemma 3 text model with a
few tiny layers.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_CORPUS = (
    "the quick brown fox jumps over the lazy dog . write a short poem about the sea , in three lines "
    "answer with yes or no . explain why the sky is blue . list three fruits : apple , banana , cherry "
    "summarize the story in one sentence . translate hello into french : bonjour . what is two plus "
    "two ? four . respond in lowercase letters only , without any commas . end your answer with the "
    "phrase is there anything else . use at least 20 words . give a title in double angular brackets "
    "<<title>> . highlight sections with markdown * like this * . paragraphs are separated by *** "
    "0 1 2 3 4 5 6 7 8 9 numbers letters A B C D E F G H I J K L M N O P Q R S T U V W X Y Z"
)


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512,
                     hidden_size: int = 64, layers: int = 2) -> Path:
    """Write a tiny random Gemma 3 text model and its tokenizer to `out_dir`; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=1024, sliding_window=128, pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id, eos_token_id=[fast.eos_token_id,
                                                      fast.convert_tokens_to_ids("<end_of_turn>")],
        tie_word_embeddings=True, attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    return out
