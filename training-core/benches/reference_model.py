"""The PyTorch reference implementation of grokforge's transformer.

`GrokforgeTransformer` is, operation for operation, the model in `training-core/src/model.rs`:
token + learned position embeddings, pre-LN blocks (causal multi-head self-attention with a fused
q/k/v projection, exact erf GELU MLP), a final LayerNorm (eps 1e-5) and a bias-free head. Its
`state_dict` names are the ones `grokforge_training_core::export::to_safetensors` writes, so a
`model.safetensors` from grokforge (a saved variant, the registry, an export package) loads with
`strict=True` and gives the same logits.

Used two ways:

* as a module: `from reference_model import GrokforgeTransformer, load_safetensors` (the issue-3
  throughput benchmark trains it side by side with grokforge);
* as a script, by `training-core/tests/pytorch_export.rs`:

      python reference_model.py logits WEIGHTS.safetensors '[[1, 2, 3], [4, 5, 6]]'

  prints `{"shape": [B, S, V], "logits": [...]}` (row-major, float32 values as exact decimals).
  The token batch may also be given as `-` to read it from standard input.

Only `torch` is required; the `safetensors` package is used when installed, otherwise the file is
parsed here (8-byte little-endian header length, JSON header, raw little-endian data).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# nn.LayerNorm's default, which grokforge uses too.
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class TransformerConfig:
    """Mirror of grokforge's `TransformerConfig` (`model.json`, or `config` in the metadata)."""

    vocab_size: int
    max_seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None

    @property
    def ff_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @classmethod
    def from_json(cls, text: str) -> "TransformerConfig":
        fields = json.loads(text)
        return cls(
            vocab_size=fields["vocab_size"],
            max_seq_len=fields["max_seq_len"],
            d_model=fields["d_model"],
            n_layers=fields["n_layers"],
            n_heads=fields["n_heads"],
            d_ff=fields.get("d_ff"),
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, sdpa: bool = False):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"{n_heads} heads do not divide d_model {d_model}")
        self.n_heads = n_heads
        # q, k and v stacked on the output axis, in that order.
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        # The fused kernel is what a fair speed comparison wants; the explicit form below is
        # grokforge's computation step for step, which the export check wants.
        self.sdpa = sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d = x.shape
        head_dim = d // self.n_heads
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(batch, seq, self.n_heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(head_dim))
            mask = torch.full((seq, seq), float("-inf"), device=x.device).triu(1)
            context = torch.softmax(scores + mask, dim=3) @ v
        return self.out(context.transpose(1, 2).reshape(batch, seq, d))

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """The output at the last position only, `[batch, d]`: its query against every key."""
        batch, seq, d = x.shape
        head_dim = d // self.n_heads
        w_q, w_kv = self.qkv.weight.split([d, 2 * d], dim=0)
        b_q, b_kv = self.qkv.bias.split([d, 2 * d], dim=0)
        q = F.linear(x[:, -1], w_q, b_q).view(batch, self.n_heads, 1, head_dim)
        k, v = F.linear(x, w_kv, b_kv).split(d, dim=2)
        k, v = (t.view(batch, seq, self.n_heads, head_dim).transpose(1, 2) for t in (k, v))
        if self.sdpa:
            context = F.scaled_dot_product_attention(q, k, v)
        else:
            context = torch.softmax((q @ k.transpose(2, 3)) * (1.0 / math.sqrt(head_dim)), dim=3) @ v
        return self.out(context.reshape(batch, d))


class Mlp(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU, as grokforge's `gelu` and `nn.GELU()`.
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-LN: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, sdpa: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(d_model, n_heads, sdpa)
        self.ln2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output at the last position only, `[batch, d]`."""
        x = x[:, -1] + self.attn.forward_last(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GrokforgeTransformer(nn.Module):
    """grokforge's decoder-only causal transformer. `forward(tokens [B, S]) -> logits [B, S, V]`."""

    def __init__(self, config: TransformerConfig, sdpa: bool = False):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.ff_width, sdpa) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(d, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[1]
        if seq > self.config.max_seq_len:
            raise ValueError(f"sequence of {seq} is longer than max_seq_len {self.config.max_seq_len}")
        x = self.tok_emb(tokens) + self.pos_emb.weight[:seq].unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward_last(self, tokens: torch.Tensor) -> torch.Tensor:
        """`forward(tokens)[:, -1]`, `[B, V]`, with the last block computing only what the last
        position needs (grokforge's `Transformer::forward_last`)."""
        x = self.tok_emb(tokens) + self.pos_emb.weight[: tokens.shape[1]].unsqueeze(0)
        for block in self.blocks[:-1]:
            x = block(x)
        return self.head(self.ln_f(self.blocks[-1].forward_last(x)))


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the `__metadata__` of a safetensors file."""
    with open(path, "rb") as file:
        data = file.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.pop("__metadata__", {}) or {}
    start = 8 + header_len
    try:
        from safetensors.torch import load as load_bytes

        return load_bytes(data), metadata
    except ImportError:
        pass
    dtypes = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] not in dtypes:
            raise ValueError(f"{path}: {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        raw = bytearray(data[start + begin : start + end])
        flat = torch.frombuffer(raw, dtype=dtypes[entry["dtype"]]) if raw else torch.empty(0, dtype=dtypes[entry["dtype"]])
        if sys.byteorder != "little":
            flat = flat.byteswap()
        tensors[name] = flat.reshape(entry["shape"]).clone()
    return tensors, metadata


def load_safetensors(path: str, sdpa: bool = False) -> GrokforgeTransformer:
    """Builds the model a grokforge `model.safetensors` describes and loads its weights (strict)."""
    tensors, metadata = read_safetensors(path)
    if "config" not in metadata:
        raise ValueError(f"{path}: no grokforge `config` in the safetensors metadata")
    model = GrokforgeTransformer(TransformerConfig.from_json(metadata["config"]), sdpa)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] != "logits":
        print("usage: reference_model.py logits WEIGHTS.safetensors TOKENS_JSON|-", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model = load_safetensors(argv[2])
    tokens_text = sys.stdin.read() if argv[3] == "-" else argv[3]
    tokens = torch.tensor(json.loads(tokens_text), dtype=torch.long)
    with torch.no_grad():
        logits = model(tokens)
    json.dump({"shape": list(logits.shape), "logits": logits.reshape(-1).tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
