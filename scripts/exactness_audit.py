"""Where the float32 error in c_t, v_t, r_t comes from on a real Llama checkpoint, measured against float64.

    python scripts/exactness_audit.py sources MODEL_DIR        # plain torch, no engine
    python scripts/exactness_audit.py layers MODEL_DIR [N] [SEED] [STEP]   # the vLLM engine with the plugin

`sources` runs one readable Llama forward with each part in float32 or float64 (matmuls, norms,
attention, residual stream, LM head) on chat texts and random tokens: which part, kept in float64,
removes the error. `layers` runs N random tokens through the real vLLM engine (in process; engine steps of
STEP tokens, default one step for the whole sequence),
hooks every decoder layer, and recomputes each layer from the engine's own input in float64 and in
plain float32: a layer whose vLLM output is much further from float64 than plain float32's would be a
kernel worse than float32. Results and their reading: docs/exactness.md.

Notation (paper): c_t = logit of the chosen token, v_t = logsumexp of the logits (alpha = 1),
r_t = c_t - v_{t+1}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
F32, F64 = torch.float32, torch.float64


class Llama:
    """The Llama decoder written out, each part in the dtype it is given (weights from safetensors)."""

    def __init__(self, model_dir: str) -> None:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.sd = load_file(str(Path(model_dir) / "model.safetensors"))
        self.n_layer, self.H, self.KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.D = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
        self.eps = cfg["rms_norm_eps"]
        self.head = self.sd.get("lm_head.weight", self.sd["model.embed_tokens.weight"])  # tied on SmolLM2

    def w(self, l: int, name: str, dt: torch.dtype) -> torch.Tensor:
        return self.sd[f"model.layers.{l}.{name}.weight"].to(dt)

    def rms(self, x: torch.Tensor, w: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        x = x.to(dt)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w.to(dt)

    def rope(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotary embedding with the angles as transformers (the float64 reference too) and vLLM make them:
        theta_j = pos / base^(2j/D) in float32, cos/sin in float32, then cast to t's dtype."""
        D = self.D
        inv_freq = 1.0 / self.theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D)
        f = pos.float()[:, None] * inv_freq[None]
        cos, sin = torch.cat([f, f], -1).cos().to(t.dtype), torch.cat([f, f], -1).sin().to(t.dtype)
        return t * cos[:, None] + torch.cat([-t[..., D // 2 :], t[..., : D // 2]], -1) * sin[:, None]

    def attention(self, l: int, h: torch.Tensor, pos: torch.Tensor, mm=F32, attn=F32) -> torch.Tensor:
        """Causal grouped-query attention of the normed input h, with its output projection."""
        T, H, KV, D = h.shape[0], self.H, self.KV, self.D
        h = h.to(mm)
        q = (h @ self.w(l, "self_attn.q_proj", mm).T).to(attn).view(T, H, D)
        k = (h @ self.w(l, "self_attn.k_proj", mm).T).to(attn).view(T, KV, D)
        v = (h @ self.w(l, "self_attn.v_proj", mm).T).to(attn).view(T, KV, D)
        q, k = self.rope(q, pos), self.rope(k, pos)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        s = torch.einsum("thd,shd->hts", q, k) / D**0.5
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        a = torch.einsum("hts,shd->thd", s.softmax(-1), v).reshape(T, H * D)
        return a.to(mm) @ self.w(l, "self_attn.o_proj", mm).T

    def mlp(self, l: int, h: torch.Tensor, mm=F32) -> torch.Tensor:
        h = h.to(mm)
        g, u = h @ self.w(l, "mlp.gate_proj", mm).T, h @ self.w(l, "mlp.up_proj", mm).T
        return (torch.nn.functional.silu(g) * u) @ self.w(l, "mlp.down_proj", mm).T

    def layer(self, l: int, x: torch.Tensor, pos: torch.Tensor, mm=F32, norm=F32, attn=F32, resid=F32) -> torch.Tensor:
        """x_{l+1} = x' + MLP(norm(x')),  x' = x_l + Attn(norm(x_l))."""
        x = x.to(resid)
        x = x + self.attention(l, self.rms(x, self.w(l, "input_layernorm", norm), norm), pos, mm, attn).to(resid)
        return x + self.mlp(l, self.rms(x, self.w(l, "post_attention_layernorm", norm), norm), mm).to(resid)

    def embed(self, ids: list[int], dt: torch.dtype) -> torch.Tensor:
        return self.sd["model.embed_tokens.weight"][torch.tensor(ids)].to(dt)

    def c_v(self, x: torch.Tensor, ids: list[int], dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """c_t = logit of token t+1 at row t, v_t = logsumexp_a of row t (alpha 1), in float64."""
        logits = self.rms(x, self.sd["model.norm.weight"], dt) @ self.head.to(dt).T
        c = logits[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return c.double(), torch.logsumexp(logits, -1).double()

    def forward(self, ids: list[int], head=F32, **parts) -> tuple[torch.Tensor, torch.Tensor]:
        pos, x = torch.arange(len(ids)), self.embed(ids, parts.get("resid", F32))
        for l in range(self.n_layer):
            x = self.layer(l, x, pos, **parts)
        return self.c_v(x, ids, head)


PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def row_relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max over rows of max|a - ref| / max|ref|: float32 noise per token, blind to a row's scale (one token
    of SmolLM2 carries activations of ~2e4 from layer 12 on, which would hide every other row)."""
    return ((a.double() - ref).abs().amax(-1) / ref.abs().amax(-1).clamp_min(1e-30)).max().item()


def r_of(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return c - torch.cat([v[1:-1], torch.zeros(1, dtype=v.dtype)])  # r_t = c_t - v_{t+1}; V(s_H) = 0 at the end


def sources(model_dir: str) -> None:
    from transformers import AutoTokenizer

    from tests.engine.test_real_model import INSTRUCTIONS, LONG_ANSWER

    m, tok = Llama(model_dir), AutoTokenizer.from_pretrained(model_dir)
    chat = lambda q, a: tok.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
    )
    seqs = {
        "chat, long answer": tok(chat("Tell me about Paris.", LONG_ANSWER))["input_ids"],
        "chat, haiku": tok(chat(*INSTRUCTIONS[0]))["input_ids"],
    }
    for n, seed in ((512, 0), (1152, 1)):
        seqs[f"random n={n} seed={seed}"] = np.random.default_rng(seed).integers(0, m.head.shape[0], n).tolist()
    variants = {
        "all float32": {},
        "LM head float64": dict(head=F64),
        "norms float64": dict(norm=F64),
        "attention float64": dict(attn=F64),
        "residual stream float64": dict(resid=F64),
        "all but matmuls float64": dict(resid=F64, norm=F64, attn=F64, head=F64),
        "matmuls float64 only": dict(mm=F64),
    }
    print("| sequence | tokens | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for name, ids in seqs.items():
        c64, v64 = m.forward(ids, head=F64, mm=F64, norm=F64, attn=F64, resid=F64)
        cells = []
        for kw in variants.values():
            c, v = m.forward(ids, **kw)
            dc, dv, dr = ((a - b).abs().max().item() for a, b in ((c, c64), (v, v64), (r_of(c, v), r_of(c64, v64))))
            cells.append(f"{dc:.1e} / {dv:.1e} / {dr:.1e}")
        print(f"| {name} | {len(ids)} | " + " | ".join(cells) + " |", flush=True)
    print("\ncells: max |dc| / |dv| / |dr| against the all-float64 forward")


def layers(model_dir: str, n: int = 512, seed: int = 1, step: int | None = None) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core (and the model) in this process
    from tests.conftest import engine_settings
    from tests.inprocess_engine import InProcessEngine

    settings = engine_settings(model_dir, max_num_batched_tokens=step or max(n, 128), max_model_len=max(2048, n))
    engine = InProcessEngine(settings, model_dir)
    decoder = engine.model.model
    calls: dict[str, list[tuple]] = {}  # one entry per engine step (chunked prefill calls a layer per chunk)

    def keep(name: str):
        def hook(mod, args, kwargs, out):  # the inputs (attention gets them as keywords) and the output
            given = {str(i): a for i, a in enumerate(args)} | kwargs
            calls.setdefault(name, []).append(
                (
                    {k: v.clone() for k, v in given.items() if isinstance(v, torch.Tensor)},
                    out[0].clone() if isinstance(out, tuple) else out.clone(),
                )
            )

        return hook

    for l, layer in enumerate(decoder.layers):
        for part in PARTS:
            getattr(layer, part).register_forward_hook(keep(f"{l}.{part}"), with_kwargs=True)
    ids = np.random.default_rng(seed).integers(0, 49152, n).tolist()
    c, v = engine.stats(ids)
    engine.shutdown()
    seen = {
        name: (
            {k: torch.cat([g[k] for g, _ in steps])[:n] for k in steps[0][0]},  # the whole sequence
            torch.cat([o for _, o in steps])[:n],
        )
        for name, steps in calls.items()
    }

    m = Llama(model_dir)
    print(
        f"{n} random tokens (seed {seed}), engine steps of {settings.max_num_batched_tokens} tokens. Each part of each layer recomputed from the engine's"
    )
    print("own input to it, in float64 and in plain float32; cells: the largest error of a row of the output,")
    print("relative to that row's largest value (vLLM / plain float32)\n")
    print("| layer | " + " | ".join(PARTS) + " |\n|---|" + "---|" * len(PARTS))
    for l in range(m.n_layer):
        cells = []
        for part in PARTS:
            given, out = seen[f"{l}.{part}"]
            if part == "self_attn":
                ref, f32 = (
                    m.attention(l, given["hidden_states"].to(dt), given["positions"], dt, dt) for dt in (F64, F32)
                )
            elif part == "mlp":
                ref, f32 = (m.mlp(l, given["0"].to(dt), dt) for dt in (F64, F32))
            else:  # RMSNorm(x + residual): vLLM fuses the residual add into the norm (no residual in layer 0)
                x = given["0"] if given.get("1") is None else given["0"] + given["1"]
                ref, f32 = (m.rms(x, m.w(l, part, dt), dt) for dt in (F64, F32))
            cells.append(f"{row_relative(out, ref):.1e} / {row_relative(f32, ref):.1e}")
        print(f"| {l} | " + " | ".join(cells) + " |")
    x64, x32, pos = m.embed(ids, F64), m.embed(ids, F32), torch.arange(n)
    for l in range(m.n_layer):
        x64, x32 = m.layer(l, x64, pos, mm=F64, norm=F64, attn=F64, resid=F64), m.layer(l, x32, pos)
    (c64, v64), (c32, v32) = m.c_v(x64, ids, F64), m.c_v(x32, ids, F32)
    cv, vv = torch.tensor(c[: n - 1], dtype=F64), torch.tensor(v, dtype=F64)
    for name, (cc, vvv) in {"vLLM plugin": (cv, vv), "plain float32": (c32, v32)}.items():
        dr = (r_of(cc, vvv) - r_of(c64, v64)).abs().max().item()
        print(
            f"\n{name}: max |dc| {(cc - c64).abs().max().item():.1e}, |dv| {(vvv - v64).abs().max().item():.1e}, |dr| {dr:.1e}"
        )


if __name__ == "__main__":
    mode, model_dir = sys.argv[1], sys.argv[2]
    with torch.no_grad():
        if mode == "sources":
            sources(model_dir)
        else:
            layers(model_dir, *(int(a) for a in sys.argv[3:6]))
