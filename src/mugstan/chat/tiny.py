"""A tiny random LLaVA checkpoint written offline: tests, benchmarks and trying ``mugstan chat`` on a CPU.

``make_tiny_llava(folder, texts)`` writes a ``LlavaForConditionalGeneration`` (CLIP ViT vision tower
of width 64 on 32-px frames with 8-px patches, P = 16; a 2-layer Llama of width 64; LLaVA's 2-layer
projector) with random weights, and a word-level tokenizer trained on ``texts`` (whitespace and
punctuation split, so every word of the prompts and answers it will see is one token), wrapped as a
``PreTrainedTokenizerFast``. Nothing is downloaded. The answers of an untrained one are random words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def make_tokenizer(texts: Iterable[str]):
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``texts`` plus <pad> <s> </s> <unk> <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no subword marks to strip
    tok.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens=["<image>"])


def make_tiny_llava(folder, texts: Iterable[str], seed: int = 0, image_size: int = 32, patch_size: int = 8,
                    vision_layers: int = 4, width: int = 64, llm_layers: int = 2, vision_init: float = 1.0,
                    select_strategy: str = "default", chat_template: Optional[str] = None) -> Path:
    """Write a random tiny LLaVA checkpoint (weights + tokenizer) to ``folder``; returns it.

    vision_init: CLIP's ``initializer_factor`` for the tower; at 1 (CLIP's) a random tower's blocks are
    nearly the identity, larger values give it the non-linear features a trained tower has.
    select_strategy: LLaVA's ``vision_feature_select_strategy`` (default: class token dropped; full: kept).
    chat_template: a Jinja chat template saved with the tokenizer (none by default: the fallback prompt)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    folder = Path(folder)
    tokenizer = make_tokenizer(texts)
    tokenizer.chat_template = chat_template
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        projection_dim=width,
        initializer_factor=vision_init,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=llm_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2 + (select_strategy == "full"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=select_strategy,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
