"""Where each supported architecture keeps the modules edgefold can compress.

One spec per architecture family, the way optimum keeps one ONNX config per architecture. A pattern is a
regular expression searched in a module's qualified name, so it matches in the base model and under any
task head (``bert.encoder...`` or ``encoder...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefold.runtime import EdgefoldError

EMBEDDINGS = "embeddings"
LINEAR_KINDS = ("q", "k", "v", "attention-output", "ffn-in", "ffn-out")
TARGET_GROUPS = {
    "embeddings": (EMBEDDINGS,),
    "attention": ("q", "k", "v", "attention-output"),
    "ffn": ("ffn-in", "ffn-out"),
}
ALL_KINDS = (EMBEDDINGS, *LINEAR_KINDS)
#: A causal LM's output head when it has its own weight (not tied to the embeddings): a plan may store it at a
#: lower precision, nothing factorises it (it is no target).
OUTPUT_HEAD = "output-head"


@dataclass(frozen=True)
class ArchitectureSpec:
    """Name patterns of one architecture family's compressible modules.

    ``modules`` maps a pattern to the kinds it holds: one kind, or several for a fused projection
    (GPT-2's ``c_attn`` holds q, k and v in one matrix, so those three are compressed together or not at all).
    ``transposed`` says the weights are stored (in x out), as GPT-2's Conv1D does. ``ort_model_type`` names
    the family for onnxruntime's transformer optimizer (None: it has no fusions for this family).
    """

    name: str
    model_types: tuple[str, ...]
    embeddings: str
    modules: dict[str, tuple[str, ...]]
    transposed: bool = False
    ort_model_type: str | None = "bert"

    def kinds_of(self, module_name: str) -> tuple[str, ...]:
        """The kinds a module holds, or () when it is not compressible."""
        if re.search(self.embeddings, module_name):
            return (EMBEDDINGS,)
        for pattern, kinds in self.modules.items():
            if re.search(pattern, module_name):
                return kinds
        return ()


_BERT_LIKE = {
    r"attention\.self\.query$": ("q",),
    r"attention\.self\.key$": ("k",),
    r"attention\.self\.value$": ("v",),
    r"attention\.output\.dense$": ("attention-output",),
    r"intermediate\.dense$": ("ffn-in",),
    r"layer\.\d+\.output\.dense$": ("ffn-out",),
}

ARCHITECTURES = (
    ArchitectureSpec("bert", ("bert", "roberta", "xlm-roberta"), r"embeddings\.word_embeddings$", _BERT_LIKE),
    ArchitectureSpec(
        "distilbert",
        ("distilbert",),
        r"embeddings\.word_embeddings$",
        {
            r"attention\.q_lin$": ("q",),
            r"attention\.k_lin$": ("k",),
            r"attention\.v_lin$": ("v",),
            r"attention\.out_lin$": ("attention-output",),
            r"ffn\.lin1$": ("ffn-in",),
            r"ffn\.lin2$": ("ffn-out",),
        },
    ),
    ArchitectureSpec(
        "gpt2",
        ("gpt2",),
        r"(^|\.)wte$",
        {
            r"attn\.c_attn$": ("q", "k", "v"),
            r"attn\.c_proj$": ("attention-output",),
            r"mlp\.c_fc$": ("ffn-in",),
            r"mlp\.c_proj$": ("ffn-out",),
        },
        transposed=True,
        ort_model_type="gpt2",
    ),
    ArchitectureSpec(
        "llama",
        ("llama", "mistral", "qwen2", "ministral3"),
        r"(^|\.)embed_tokens$",
        {
            r"self_attn\.q_proj$": ("q",),
            r"self_attn\.k_proj$": ("k",),
            r"self_attn\.v_proj$": ("v",),
            r"self_attn\.o_proj$": ("attention-output",),
            r"mlp\.(gate_proj|up_proj)$": ("ffn-in",),
            r"mlp\.down_proj$": ("ffn-out",),
        },
        ort_model_type=None,
    ),
)

SUPPORTED_MODEL_TYPES = tuple(t for spec in ARCHITECTURES for t in spec.model_types)


def spec_for(model_type: str) -> ArchitectureSpec:
    """The spec of a transformers ``model_type``; an unsupported one is refused by name."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise EdgefoldError(
        f"architecture {model_type!r} is not supported; edgefold can fold: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def parse_targets(text: str) -> frozenset[str]:
    """``embeddings,attention,ffn`` or finer kinds (``q,k,v,attention-output,ffn-in,ffn-out``) as a set of kinds."""
    kinds: set[str] = set()
    for word in (w.strip() for w in text.split(",")):
        if word in TARGET_GROUPS:
            kinds.update(TARGET_GROUPS[word])
        elif word in ALL_KINDS:
            kinds.add(word)
        else:
            valid = ", ".join([*TARGET_GROUPS, *LINEAR_KINDS])
            raise EdgefoldError(f"unknown target {word!r}; choose from: {valid}")
    return frozenset(kinds)
