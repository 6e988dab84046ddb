"""The user's adapter family restated from the user's formats note (ARCHITECTURE.md, "The user's
formats", summarises it), independently of gatebench.

Nothing here imports gatebench: it is the second implementation the parity tests hold gatebench
against ("The reference forward of the user family, exactly"). It works like the user's code: a
processor that wraps attn2's attention processor, reads its OUTPUT h, and returns
``h + s * (out - h)`` with ``out = h + tanh(gate) * to_out(attn(h -> context))``; the user's
inference broadcasts one layout's boxes to the whole UNet batch (both CFG halves).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

HEADS = 8
FORMATS_KEYS = ("position_net.freqs", "position_net.fourier_embedder.0.weight",
                "position_net.fourier_embedder.0.bias", "position_net.fourier_embedder.2.weight",
                "position_net.fourier_embedder.2.bias", "text_proj.weight", "text_proj.bias",
                "gated_attn.to_q.weight", "gated_attn.to_k.weight", "gated_attn.to_v.weight",
                "gated_attn.to_out.weight", "gated_attn.to_out.bias", "gated_attn.gate")


def random_user_state(widths: tuple[int, ...], text_dim: int, seed: int = 0,
                      gate: float = 0.7) -> dict[str, torch.Tensor]:
    """A bare state dict with the user's keys and shapes: gate != 0, random to_out."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for d in widths:
        p = f"dim_{d}."
        state.update({
            p + "position_net.freqs": torch.linspace(0, 1, 8),
            p + "position_net.fourier_embedder.0.weight": rand(d // 2, 64),
            p + "position_net.fourier_embedder.0.bias": rand(d // 2),
            p + "position_net.fourier_embedder.2.weight": rand(d, d // 2),
            p + "position_net.fourier_embedder.2.bias": rand(d),
            p + "text_proj.weight": rand(d, text_dim), p + "text_proj.bias": rand(d),
            p + "gated_attn.to_q.weight": rand(d, d), p + "gated_attn.to_k.weight": rand(d, d),
            p + "gated_attn.to_v.weight": rand(d, d), p + "gated_attn.to_out.weight": rand(d, d),
            p + "gated_attn.to_out.bias": rand(d), p + "gated_attn.gate": torch.tensor([gate])})
    return state


def fourier(boxes: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x1, y1, x2, y2 in that order: 8 sin(2 pi f c) then 8 cos(2 pi f c) each -> 64 values."""
    groups = []
    for i in range(4):
        angle = 2 * math.pi * freqs * boxes[..., i:i + 1]
        groups += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(groups, dim=-1)


def user_adapter(h: torch.Tensor, boxes: torch.Tensor, phrases: torch.Tensor | None,
                 mask: torch.Tensor, p: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """The user's forward at one attn2 output ``h`` (B, L, D), computed in float32 and cast
    back once; ``phrases`` None (the user's inference on a non-Kolors base): no text term."""
    dtype, h = h.dtype, h.float()
    p = {k: v.float() for k, v in p.items()}
    d = h.shape[-1]
    pos = F.linear(fourier(boxes.float(), p["position_net.freqs"]),
                   p["position_net.fourier_embedder.0.weight"], p["position_net.fourier_embedder.0.bias"])
    pos = F.linear(F.silu(pos), p["position_net.fourier_embedder.2.weight"],
                   p["position_net.fourier_embedder.2.bias"])
    if phrases is None:
        context = pos * mask.float()[..., None]
    else:
        phrases = phrases.float()
        text = phrases if phrases.shape[-1] == d else F.linear(phrases, p["text_proj.weight"],
                                                               p["text_proj.bias"])
        context = (pos + text) * mask.float()[..., None]
    b, length, n = h.shape[0], h.shape[1], context.shape[1]
    heads = lambda x, m: x.view(b, m, HEADS, d // HEADS).transpose(1, 2)  # noqa: E731
    q = heads(F.linear(h, p["gated_attn.to_q.weight"]), length)
    k = heads(F.linear(context, p["gated_attn.to_k.weight"]), n)
    v = heads(F.linear(context, p["gated_attn.to_v.weight"]), n)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // HEADS)
    logits = logits.masked_fill(mask[:, None, None, :] == 0, -1e4)
    attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, length, d)
    out = h + torch.tanh(p["gated_attn.gate"]) * F.linear(attn, p["gated_attn.to_out.weight"],
                                                         p["gated_attn.to_out.bias"])
    return (h + scale * (out - h)).to(dtype)


class UserProcessor:
    """Wraps attn2's own processor as the user's adapter does; boxes are broadcast to the batch."""

    def __init__(self, inner, state: dict[str, torch.Tensor], boxes: torch.Tensor,
                 phrases: torch.Tensor, mask: torch.Tensor, scale: float) -> None:
        self.inner, self.state = inner, state
        self.boxes, self.phrases, self.mask, self.scale = boxes, phrases, mask, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        h = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        d = h.shape[-1]
        p = {k[len(f"dim_{d}."):]: v for k, v in self.state.items() if k.startswith(f"dim_{d}.")}
        b = h.shape[0]
        expand = lambda x: x if x is None or x.shape[0] != 1 else x.expand(b, *x.shape[1:])  # noqa: E731
        return user_adapter(h, expand(self.boxes), expand(self.phrases), expand(self.mask), p,
                            self.scale)


def install(unet, state, boxes, phrases, mask, scale) -> dict:
    """Put a UserProcessor at every attn2; returns the previous processors (to restore)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    previous = dict(unet.attn_processors)
    unet.set_attn_processor({name: UserProcessor(AttnProcessor2_0(), state, boxes, phrases, mask,
                                                 scale) if ".attn2." in name else proc
                             for name, proc in previous.items()})
    return previous


def phrase_vectors(names: list[str], tokenizer, encoder, *, seq_first: bool) -> torch.Tensor:
    """The user's phrase vectors: a layout's names tokenized together (padding to the longest,
    max_length 32, truncation), last hidden state, mean over the attention mask; "" -> zeros."""
    tokens = tokenizer(names, padding="longest", max_length=32, truncation=True,
                       return_tensors="pt")
    kwargs = {k: v for k, v in tokens.items() if k in ("attention_mask", "position_ids")}
    with torch.no_grad():
        hidden = encoder(input_ids=tokens["input_ids"], **kwargs).last_hidden_state
    hidden = hidden.permute(1, 0, 2) if seq_first else hidden
    m = tokens["attention_mask"].float()[..., None]
    vectors = (hidden.float() * m).sum(1) / m.sum(1)
    return torch.stack([v if n.strip() else torch.zeros_like(v) for n, v in zip(names, vectors, strict=True)])
