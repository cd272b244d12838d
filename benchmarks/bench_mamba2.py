"""A Mamba-2 layer against our S6 (Mamba) layer of the same d_model: forward and forward+backward seconds,
medians of interleaved repeats (every repeat times each layer in turn), a markdown table on stdout and JSON.

    python benchmarks/bench_mamba2.py --threads 1 --json mamba2_layers.json
    python benchmarks/bench_mamba2.py --quick

Each layer maps (batch, L, d_model) -> (batch, L, d_model) with its default backend (the PyTorch paths on a
CPU). S6 runs at d_state 16 (the paper's Mamba on CIFAR-10) and 64, Mamba2 at 64 (its default here) and 16;
both have d_inner = 2 d_model. With ``--peer`` (default on when transformers imports) transformers'
``Mamba2Mixer`` torch path with the same weights is timed too, and the ratio column is its time over ours.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from advssm.ssm_layers.checkpoint import atomic_write
from advssm.ssm_layers.layers import S6, Mamba2


def _layers(d_model: int, peer: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    layers = {
        "s6 (N 16)": S6(d_model, d_state=16),
        "s6 (N 64)": S6(d_model, d_state=64),
        "mamba2 (N 64)": Mamba2(d_model, d_state=64),
        "mamba2 (N 16)": Mamba2(d_model, d_state=16),
    }
    if peer:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

        ours = layers["mamba2 (N 64)"]
        config = Mamba2Config(hidden_size=d_model, num_heads=ours.nheads, head_dim=ours.head_dim, n_groups=1,
                              state_size=64, chunk_size=ours.chunk_size, num_hidden_layers=1, vocab_size=8)
        theirs = Mamba2Mixer(config, layer_idx=0).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        layers["transformers Mamba2Mixer (N 64)"] = theirs
    return layers


def _step(layer, x, cotangent, backward: bool):
    if not backward:
        with torch.no_grad():
            layer(x)
        return
    xg = x.detach().requires_grad_(True)
    layer(xg).backward(cotangent)


def run(batch: int, lengths: list[int], d_model: int, repeats: int, peer: bool) -> list[dict]:
    layers = _layers(d_model, peer)
    rows = []
    for L in lengths:
        g = torch.Generator().manual_seed(L)
        x, cot = torch.randn(batch, L, d_model, generator=g), torch.randn(batch, L, d_model, generator=g)
        times = {(name, bwd): [] for name in layers for bwd in (False, True)}
        for layer in layers.values():  # warm-up
            for bwd in (False, True):
                _step(layer, x, cot, bwd)
        for _ in range(repeats):
            for (name, bwd), samples in times.items():
                layer = layers[name]
                layer.zero_grad(set_to_none=True)
                start = time.perf_counter()
                _step(layer, x, cot, bwd)
                samples.append(time.perf_counter() - start)
        for name, layer in layers.items():
            fwd, both = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
            rows.append({"layer": name, "batch": batch, "L": L, "d_model": d_model,
                         "parameters": sum(p.numel() for p in layer.parameters()),
                         "fwd_s": fwd, "fwd_bwd_s": both, "repeats": repeats})
    return rows


def to_markdown(rows: list[dict]) -> str:
    """One row per (L, layer); ratios: S6 (N 16)'s time over the layer's, measured in the same run."""
    lines = ["| L | layer | parameters | fwd (ms) | fwd+bwd (ms) | S6 N16 / this, fwd | S6 N16 / this, fwd+bwd |",
             "|---|---|---|---|---|---|---|"]
    for L in sorted({r["L"] for r in rows}):
        group = [r for r in rows if r["L"] == L]
        base = next(r for r in group if r["layer"] == "s6 (N 16)")
        for r in group:
            lines.append(f"| {L} | {r['layer']} | {r['parameters']:,} | {1e3 * r['fwd_s']:.1f} | "
                         f"{1e3 * r['fwd_bwd_s']:.1f} | {base['fwd_s'] / r['fwd_s']:.2f} | "
                         f"{base['fwd_bwd_s'] / r['fwd_bwd_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="batch 2, L 256, 3 repeats")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip transformers' Mamba2Mixer")
    parser.add_argument("--json", dest="json_path", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.lengths, args.repeats = 2, [256], 3
    if args.peer:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: its Mamba2Mixer is not timed (pip install transformers)",
                  file=sys.stderr)
            args.peer = False
    rows = run(args.batch, args.lengths, args.d_model, args.repeats, args.peer)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    print(f"torch {meta['torch']}, {meta['threads']} thread(s), float32, medians of {args.repeats} repeats\n")
    print(to_markdown(rows))
    if args.json_path:
        atomic_write(args.json_path, (json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
