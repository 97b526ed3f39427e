"""Tracing in parts (spartan.channel_run): where a parent cannot be traced, a child's output
that only its next sibling reads keeps its channels (a BERT-style MLP split over two modules);
one the parent also uses stays pinned; members of a ModuleList are traced too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan import shrink
from spartan.channels import trace_channels
from tests.spartan.test_channels import cfg, train


class Up(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 24)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class Down(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(24, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.norm(self.dense(h) + residual)


class Block(nn.Module):
    """Untraceable (data-dependent branch); `leak` also reads the hidden units in the block."""

    def __init__(self, leak: bool = False) -> None:
        super().__init__()
        self.up, self.down, self.leak = Up(), Down(), leak

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 1e9:
            x = x * 0
        h = self.up(x)
        out = self.down(h, x)
        return out + h[..., :8] if self.leak else out


class Stack(nn.Module):
    def __init__(self, leak: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(leak), Block(leak)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_hidden_units_split_over_two_modules_are_items() -> None:
    g = trace_channels(Stack(), torch.randn(4, 8))
    assert any("blocks.0" in f for f in g.fallbacks)
    assert set(g.layers) == {f"blocks.{i}.{p}.dense" for i in (0, 1) for p in ("up", "down")}
    assert g.n_items == 48  # 24 hidden units per block


def test_the_split_model_shrinks_to_the_masked_outputs() -> None:
    model, x = Stack(), torch.randn(16, 8)
    s = train(model, x, cfg(budget=0.5), 8)
    s.finalize()
    model.eval()
    small = shrink(model, x).eval()
    assert small.blocks[0].up.dense.out_features < 24
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)


def test_an_output_the_parent_also_reads_stays_pinned() -> None:
    g = trace_channels(Stack(leak=True), torch.randn(4, 8))
    assert g.n_items == 0


def _hf_causal_lm(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from spartan.hf import make_maskable

    torch.manual_seed(0)
    if kind == "llama":  # grouped-query attention: 4 q heads over 2 k / v heads
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=32)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "gpt2":  # one fused q / k / v projection
        config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                         n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4)
        model = transformers.BertForSequenceClassification(config)

    class Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Tensor) -> Tensor:
            return self.inner(input_ids=ids).logits

    return Logits(make_maskable(model))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_hugging_face_models_lose_units_and_heads_exactly(kind: str) -> None:
    """Real transformers layers (untraceable whole): Llama loses MLP units and whole GQA head
    groups, BERT MLP units and heads (q / k / v in `self`, the output projection beside it),
    GPT-2 MLP units and heads (one fused q / k / v projection); shrink is exact."""
    model, ids = _hf_causal_lm(kind), torch.randint(0, 64, (2, 7))
    s = train(model, ids, cfg(budget=0.5, min_keep=0.25), 6)
    kinds = {lay.kind for lay in s.graph.layers.values()}
    assert kinds == {"attention", "linear"}
    s.finalize()
    model.eval()
    small = shrink(model, ids).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    if kind == "llama":
        attn = small.inner.model.layers[0].self_attn
        assert attn.q_proj.out_features == 2 * attn.k_proj.out_features  # whole groups
    elif kind == "gpt2":
        attns = [block.attn for block in small.inner.transformer.h]
        assert min(a.split_size for a in attns) < 32
        assert all(a.c_attn.out_features == 3 * a.c_proj.in_features == 3 * a.split_size
                   for a in attns)
    else:
        heads = [layer.attention for layer in small.inner.bert.encoder.layer]
        assert min(a.self.query.out_features for a in heads) < 32
        assert all(a.output.dense.in_features == a.self.value.out_features for a in heads)
    with torch.no_grad():
        torch.testing.assert_close(small(ids), model(ids), rtol=1e-5, atol=1e-6)
