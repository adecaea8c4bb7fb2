"""Random-weight models of *real* architectures, built from small configs (DESIGN.md, "Real
models on a machine without a GPU or a hub").

Each builder writes an ordinary Hugging Face folder (safetensors weights, configs, tokenizer
files) that loads through exactly the same code as a real checkpoint:

- `build_tiny_sd`: a Stable Diffusion pipeline (UNet2DConditionModel, AutoencoderKL,
  CLIPTextModel, a CLIPTokenizer made from a locally written byte-level vocabulary with no
  merges, DDIM scheduler with `steps_offset=1`; no safety checker);
- `build_tiny_llama` / `build_tiny_gpt2`: causal LMs with a byte-level BPE tokenizer trained
  in memory on a small English corpus. The Llama tokenizer has a chat template; GPT-2 has
  none and ties its input and output embeddings (so weight tying is exercised).

`scale=1` is tiny (tests: a 2-step 32x32 image or a few tokens take milliseconds on one CPU
thread); larger scales widen and deepen the models so a demo store has real size trade-offs.
Nothing is downloaded. The same seed and scale give byte-identical files, and building never
changes the caller's global torch RNG.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

# A few paragraphs of plain English: the tokenizers' training corpus (and so their vocabulary).
CORPUS = """\
Edge servers near users can serve image and text generation with far less delay and backhaul
traffic than the cloud, but they have little disk and little GPU memory. Models differ
wildly in storage, in GPU memory and in switching delay: the time it takes to preload the
weights from disk into GPU memory before the first request can run.

A model can be kept resident in GPU memory, kept on disk and loaded on demand into a shared
pool, or left to the cloud. Deciding this for every model and every host is a coupled
problem: memory, storage, compute time and request rates all matter at once.

The quick brown fox jumps over the lazy dog. A lighthouse stands on a cliff at sunset, and
the sea below is calm and blue. The weather today is warm, with a light wind from the west.
People walk along the river, children play in the park, and a small boat sails past.

Hello! How are you today? I am fine, thank you. What would you like to talk about? Tell me a
story about a cat who lives in a library and reads books at night. Once upon a time there
was a curious cat named Tom. He loved to read, to learn and to sleep in the sun.

Numbers and symbols appear too: 0 1 2 3 4 5 6 7 8 9, 10, 100, 2024; (a, b), [x], {y}, "z",
it's, don't, can't; e-mail, well-known, state-of-the-art; 3.14, 50%, $5, #1, @home, a+b=c.
"""

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


# --------------------------------------------------------------------------------------
# Stable Diffusion
# --------------------------------------------------------------------------------------


def _clip_tokenizer(workdir: Path) -> Any:
    """A CLIPTokenizer over a byte-level vocabulary (every byte, with and without the `</w>`
    end-of-word mark, plus the two special tokens) and no merges: every word is spelt out
    byte by byte, which is all a random-weight text encoder needs."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab_file = workdir / "vocab.json"
    merges_file = workdir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(workdir, model_max_length=77)


def build_tiny_sd(dest: Path, *, seed: int = 0, scale: int = 1) -> Path:
    """Build a random-weight Stable Diffusion pipeline folder in `dest` and return it.

    scale=1: ~7 MB, default image 32x32 (latents 16x16, VAE downsampling 2); one 2-step
    generation takes ~50 ms on one CPU thread. Larger scales widen every model; from
    scale=4 (~60 MB) the UNet has two layers per block and the VAE a third level (default
    image 64x64, downsampling 4).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    if scale < 1:
        raise ValueError("scale must be >= 1")
    dest = Path(dest)
    w = 16 * (scale + 1)  # UNet width: 32 at scale 1; keep a multiple of the 8 norm groups
    text_dim = 32 * scale
    vae_levels = 2 if scale < 4 else 3
    # Seed torch for the weights, restoring the caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = _clip_tokenizer(Path(tmp))
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(w, 2 * w),
            layers_per_block=1 if scale < 4 else 2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=text_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae_channels = tuple(min(w * 2**i, 2 * w) for i in range(vae_levels))
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * vae_levels,
            up_block_types=("UpDecoderBlock2D",) * vae_levels,
            block_out_channels=vae_channels,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16 * 2 ** (vae_levels - 1),
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                projection_dim=text_dim,
                num_hidden_layers=2 * scale,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipe: Any = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(dest, safe_serialization=True)
    return dest


# --------------------------------------------------------------------------------------
# Language models
# --------------------------------------------------------------------------------------


def _train_bpe(vocab_size: int, special: list[str]) -> Any:
    """A byte-level BPE tokenizer (`tokenizers`) trained in memory on `CORPUS`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tok


def _fast_tokenizer(vocab_size: int, special: list[str], **kw: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_train_bpe(vocab_size, special), **kw)


def build_tiny_llama(dest: Path, *, seed: int = 0, scale: int = 1) -> Path:
    """Build a random-weight LlamaForCausalLM folder (untied embeddings, grouped-query
    attention, rotary positions) with a BPE tokenizer and a chat template; returns `dest`.

    Width 64*scale-32 and 2*scale layers: ~0.2 MB at scale 1, ~17 MB at scale 4."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if scale < 1:
        raise ValueError("scale must be >= 1")
    dest = Path(dest)
    tokenizer = _fast_tokenizer(
        512,
        ["<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=2048,
    )
    tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    hidden = 64 * scale - 32  # 32 at scale 1; head size stays even (rotary embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden + 16 * scale,
        num_hidden_layers=2 * scale,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed torch for the weights, restoring the caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def build_tiny_gpt2(dest: Path, *, seed: int = 0, scale: int = 1) -> Path:
    """Build a random-weight GPT2LMHeadModel folder (output layer tied to the token
    embeddings) with a BPE tokenizer and no chat template; returns `dest`.

    Width 64*scale-32 and 2*scale layers: ~0.3 MB at scale 1, ~20 MB at scale 4."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if scale < 1:
        raise ValueError("scale must be >= 1")
    dest = Path(dest)
    tokenizer = _fast_tokenizer(
        512,
        ["<|endoftext|>"],
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=1024,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64 * scale - 32,
        n_layer=2 * scale,
        n_head=4,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # Seed torch for the weights, restoring the caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
        model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
