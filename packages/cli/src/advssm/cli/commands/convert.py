"""``advssm convert``: a pretrained Mamba / Mamba-2 folder (transformers or mamba_ssm) as an advssm checkpoint."""
from __future__ import annotations

from pathlib import Path

import click
import torch
from advssm.ssm_layers import save_checkpoint
from advssm.ssm_layers.pretrained import BOXES, PretrainedConfigError, load_pretrained

from ..errors import ConfigError
from ..output import emit

DTYPES = ("float32", "float64", "bfloat16")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--n-classes", default=2, show_default=True, type=click.IntRange(min=2),
              help="Classes of the new classification head.")
@click.option("--box", type=click.Choice(BOXES), default=BOXES[0], show_default=True,
              help="The input box: per-coordinate min/max of the token embeddings, or one common range (cube).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="dtype of the stored weights.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the new head.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def convert(folder, out, n_classes, box, dtype, seed, overwrite, as_json):
    """Write FOLDER's Mamba / Mamba-2 backbone with a new N-class head as an advssm checkpoint OUT.

    FOLDER: a transformers (config.json + model.safetensors) or mamba_ssm (config.json + pytorch_model.bin,
    read with weights_only) checkpoint. The model's inputs are (batch, length, d_model) in [0, 1]: its first
    layer maps them onto the box of the token embeddings (docs/concepts/mamba2.md), so advssm eval and the
    attacks work in embedding space. A config it cannot map is one error naming the key.

    \b
    Examples:
      advssm convert mamba-130m-hf mamba130m.safetensors --n-classes 2
      advssm convert mamba2-130m m2.safetensors --box cube --json
    """
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it, or choose another file")
    try:
        pretrained = load_pretrained(folder, n_classes=n_classes, box=box, dtype=getattr(torch, dtype), seed=seed)
    except PretrainedConfigError as exc:
        raise ConfigError(str(exc)) from exc
    spec = pretrained.spec
    source = {"folder": str(Path(folder).resolve()), "format": spec.source, "layer": spec.layer,
              "vocab_size": spec.vocab_size, "box": box, "head_seed": seed}
    save_checkpoint(out_path, pretrained.model, metadata={"converted_from": source})
    n_params = sum(p.numel() for p in pretrained.model.parameters())
    result = {"checkpoint": str(out_path), **source, "d_model": spec.d_model, "n_layers": spec.n_layers,
              "d_state": spec.d_state, "n_classes": n_classes, "dtype": dtype, "parameters": n_params}
    text = (f"{out_path}: {spec.source} {spec.layer} backbone ({spec.n_layers} layers, d_model {spec.d_model}, "
            f"d_state {spec.d_state}, {n_params:,} parameters) with a new {n_classes}-class head; inputs "
            f"(batch, length, {spec.d_model}) in [0, 1] ({box} box of the {spec.vocab_size} token embeddings)")
    emit(result, as_json, text)
