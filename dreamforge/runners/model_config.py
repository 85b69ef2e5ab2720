"""What `from_single_file` needs besides the weights, shipped with DreamForge so that loading never
asks a model hub: SDXL base's component configs and scheduler config (``sdxl_config/``), and both
CLIP tokenizers, whose BPE vocabulary is built from CLIP's own merges file (``data/``).

No torch here: building the folder is plain file work.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "sdxl_config"
BPE = HERE / "data" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges: 256 byte tokens, 256 with </w>, the merges and the
# two specials make its 49408-token vocabulary.
N_MERGES = 49152 - 256 - 2
CONFIG_VERSION = "sdxl-base-1"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """CLIP's token → id table and its merges, from the BPE file."""
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path) -> None:
    vocab, merges = clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def sdxl_config_dir(cache_root: Path) -> Path:
    """A Diffusers-layout folder with SDXL base's configs and tokenizers (no weights), built once
    under ``cache_root`` and reused."""
    target = cache_root / CONFIG_VERSION
    if (target / "model_index.json").exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".building-"))
    try:
        shutil.copytree(SHIPPED, tmp, dirs_exist_ok=True)
        for name in ("tokenizer", "tokenizer_2"):
            write_tokenizer_files(tmp / name)
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def use_open_clip_padding(tokenizer_2: object) -> None:
    """SDXL's second text encoder was trained on open_clip's tokens, which pad with id 0 ("!").
    Declaring "!" as the pad *token* would make the tokenizer split every "!" out of a prompt
    ("4k!!!" → 0 0 0 instead of the merged "!!!"); setting only the pad *id* keeps both right."""
    tokenizer_2.pad_token_id = 0  # type: ignore[attr-defined]
