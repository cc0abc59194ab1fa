"""The `small` training step in minids against the same model written in PyTorch, in one process.

    python benchmarks/bench_torch.py           # a table (about a minute on 2 CPU cores, plus compiling)
    python benchmarks/bench_torch.py --quick   # fewer repeats
    python benchmarks/bench_torch.py --smoke   # smallest shapes, 1 repeat: checks it runs
    python benchmarks/bench_torch.py --json    # one JSON object on stdout, nothing else

Needs torch (the `parity` extra). Why it exists: bench_train.py's target, 60% of the matmul rate
for `small`, was set against a yardstick, a well-made PyTorch model of the same shape. This script
measures that yardstick on the machine at hand instead of quoting it.

What it measures: one training step (forward, backward, gradient clipping at norm 1, AdamW) on
16 sequences of 256 tokens of the `small` shape (D 256, 6 layers, 8 query and 4 key/value heads of
32, SwiGLU width 768, vocabulary 128), in

    minids          `minids.train.train_step`, as bench_train.py times it
    torch_eager     the PyTorch model below, run eagerly; its attention is
                    `F.scaled_dot_product_attention(is_causal=True)`, PyTorch's fused CPU kernel
    torch_compiled  the same module through `torch.compile` (it needs a C++ compiler; null if
                    compiling fails)

and a 2048 x 2048 float32 matmul in each framework. All five are timed in a new order each round
(`_common.interleaved_ms`), and each figure is a median over the rounds. Model FLOP/s use
bench_train.py's formula; each step is divided by its own framework's matmul rate, so the fractions
say how well each framework uses what this machine gives it, and the time ratios compare the two.
bench_train.py divides by the fastest matmul of its run instead: a stricter yardstick, the machine at
its best moment rather than a typical one; `matmul_fraction_best` is that figure.

The PyTorch model has minids' parameter shapes (checked: the same P_matmul): pre-norm blocks of
RMSNorm (eps 1e-6), grouped-query attention with RoPE on channel pairs (i, i + H/2), SwiGLU, a final
RMSNorm and an untied output head; the loss is the mean cross-entropy over all tokens. Its
initialisation is PyTorch's default: the work of a step does not depend on the weights.

JSON keys (`--json`):

    backend, jax_version, torch_version, cpu_count, torch_threads
    batch, seq_len, flops_per_token
    jax_matmul_gflops, torch_matmul_gflops    each framework's float32 matmul rate (median)
    steps: {name: {...}}                      "minids", "torch_eager", "torch_compiled", with
        step_ms                               median training step, milliseconds
        matmul_fraction                       model FLOP/s / that framework's matmul rate
        matmul_fraction_best                  the same over its best matmul of the run (bench_train's)
    minids_over_torch_eager                   minids step time / eager PyTorch's
    minids_over_torch_compiled                minids step time / compiled PyTorch's (null if it failed)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import add_run_flags, interleaved_ms, log, print_columns, repeats
from bench_train import flops_per_token  # the same model-FLOP formula as bench_train's fraction

from minids.config import preset
from minids.cost import matmul_params
from minids.model import Transformer
from minids.train import TrainConfig, make_optimizer, train_step

BATCH = 16
MATMUL_N = 2048
# --smoke: `small` cut to this many layers and tokens per sequence, the batch, the matmul size
SMOKE_LAYERS, SMOKE_SEQ_LEN, SMOKE_BATCH, SMOKE_MATMUL_N = 1, 32, 2, 256


def torch_model(cfg):
    """The `small` model in PyTorch: (module, its P_matmul). Imported here: torch is optional."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    D, N, M, H, Fw = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(D))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * self.scale

    def rope(x, cos, sin):  # x (B, heads, T, H); pairs (i, i + H/2), as minids.layers.apply_rope
        x1, x2 = x[..., : H // 2], x[..., H // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm, self.ffn_norm = RMSNorm(), RMSNorm()
            self.wq = nn.Linear(D, N * H, bias=False)
            self.wk = nn.Linear(D, M * H, bias=False)
            self.wv = nn.Linear(D, M * H, bias=False)
            self.wo = nn.Linear(N * H, D, bias=False)
            self.gate = nn.Linear(D, Fw, bias=False)
            self.up = nn.Linear(D, Fw, bias=False)
            self.down = nn.Linear(Fw, D, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            h = self.attn_norm(x)
            q = self.wq(h).view(B, T, N, H).transpose(1, 2)
            k = self.wk(h).view(B, T, M, H).transpose(1, 2)
            v = self.wv(h).view(B, T, M, H).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.wo(a.transpose(1, 2).reshape(B, T, N * H))
            h = self.ffn_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, D)
            self.blocks = nn.ModuleList([Block() for _ in range(cfg.n_layers)])
            self.norm = RMSNorm()
            self.head = nn.Linear(D, cfg.vocab_size, bias=False)
            angles = (
                torch.arange(cfg.max_seq_len, dtype=torch.float32)[:, None]
                * cfg.rope_theta ** (-torch.arange(0, H, 2, dtype=torch.float32) / H)[None, :]
            )
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

        def forward(self, tokens):
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x, self.cos, self.sin)
            return self.head(self.norm(x))

    model = Model()
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return model, n_matmul


def torch_step(model, inputs, targets):
    """One training step as minids takes it: loss, backward, clip the global norm at 1, AdamW."""
    import torch
    from torch.nn import functional as F

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    params = list(model.parameters())

    def step(forward):
        logits = forward(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError as err:
        raise SystemExit("bench_torch.py needs torch: pip install -e '.[parity]'") from err
    t0 = time.perf_counter()
    cfg = preset("small")
    B, matmul_n = BATCH, MATMUL_N
    if args.smoke:
        cfg = cfg.replace(n_layers=SMOKE_LAYERS, max_seq_len=SMOKE_SEQ_LEN)
        B, matmul_n = SMOKE_BATCH, SMOKE_MATMUL_N
    T = cfg.max_seq_len
    fpt = flops_per_token(cfg, T)
    rng = np.random.default_rng(0)
    tokens = {k: rng.integers(3, cfg.vocab_size, (B, T)) for k in ("inputs", "targets")}

    model = Transformer(cfg)
    optimizer = make_optimizer(model, TrainConfig())
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in tokens.items()}
    batch["loss_mask"] = jnp.ones((B, T), jnp.float32)
    a = jax.random.normal(jax.random.key(0), (matmul_n, matmul_n), jnp.float32)
    jax_matmul = jax.jit(lambda a: a @ a)

    torch.manual_seed(0)
    module, n_matmul = torch_model(cfg)
    if n_matmul != matmul_params(cfg):
        raise AssertionError(
            f"the PyTorch model has {n_matmul} matmul weights, minids {matmul_params(cfg)}"
        )
    inputs, targets = (torch.from_numpy(tokens[k]).long() for k in ("inputs", "targets"))
    step = torch_step(module, inputs, targets)
    at, out = torch.randn(matmul_n, matmul_n), torch.empty(matmul_n, matmul_n)

    calls = {
        "minids": lambda: train_step(model, optimizer, batch),
        "torch_eager": lambda: step(module),
        "jax_matmul": lambda: jax_matmul(a),
        "torch_matmul": lambda: torch.mm(at, at, out=out),
    }
    try:
        compiled = torch.compile(module)
        t = time.perf_counter()
        step(compiled)
        log(f"  torch.compile took {time.perf_counter() - t:.0f} s")
        calls["torch_compiled"] = lambda: step(compiled)
    except Exception as err:  # no C++ compiler, or an unsupported platform: report, don't fail
        log(
            f"  torch.compile failed ({type(err).__name__}: {str(err)[:200]}); torch_compiled is null"
        )
    samples: dict[str, list[float]] = {}
    ms = interleaved_ms(
        calls, repeats(args, full=12, quick=4), samples=samples, warm_up=not args.smoke
    )

    matmul_flops = 2 * matmul_n**3  # GFLOP/s = FLOPs / ms / 1e6
    rates = {fw: matmul_flops / ms.pop(f"{fw}_matmul") / 1e6 for fw in ("jax", "torch")}
    best = {fw: matmul_flops / min(samples[f"{fw}_matmul"]) / 1e6 for fw in ("jax", "torch")}
    steps = {}
    for name in ("minids", "torch_eager", "torch_compiled"):
        if name not in ms:
            steps[name] = None
            continue
        fw = "jax" if name == "minids" else "torch"
        gflops = fpt * B * T / ms[name] / 1e6
        steps[name] = {
            "step_ms": ms[name],
            "matmul_fraction": gflops / rates[fw],
            "matmul_fraction_best": gflops / best[fw],
        }
    compiled_ms = ms.get("torch_compiled")
    report = {
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batch": B,
        "seq_len": T,
        "flops_per_token": fpt,
        "jax_matmul_gflops": rates["jax"],
        "torch_matmul_gflops": rates["torch"],
        "steps": steps,
        "minids_over_torch_eager": ms["minids"] / ms["torch_eager"],
        "minids_over_torch_compiled": None if compiled_ms is None else ms["minids"] / compiled_ms,
    }
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"jax {report['jax_version']} (float32 matmul {rates['jax']:.0f} GFLOP/s), torch "
            f"{report['torch_version']} ({rates['torch']:.0f} GFLOP/s, {report['torch_threads']} threads), "
            f"{report['cpu_count']} CPUs; {cfg.n_layers}-layer `small`, {B} x {T} tokens per step, "
            "medians"
        )
        shown = {k: v for k, v in steps.items() if v is not None}
        print_columns(
            shown,
            [
                ("train step", lambda r: f"{r['step_ms']:.0f} ms"),
                ("fraction of matmul rate", lambda r: f"{r['matmul_fraction']:.1%}"),
                ("  (of the run's best matmul)", lambda r: f"{r['matmul_fraction_best']:.1%}"),
            ],
            width=16,
        )
        print(
            f"minids step / eager PyTorch step: {report['minids_over_torch_eager']:.2f}x"
            + (
                ""
                if compiled_ms is None
                else f"; / compiled PyTorch step: {report['minids_over_torch_compiled']:.2f}x"
            )
        )
    return report


if __name__ == "__main__":
    main()
