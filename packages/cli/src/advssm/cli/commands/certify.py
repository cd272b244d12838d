"""``advssm certify``: certified accuracy of a checkpoint, by randomized smoothing (L2) or interval bound
propagation (Linf), as a table, a JSON file and a plot."""
from __future__ import annotations

import io
import time
from pathlib import Path

import click
import torch
from advssm.ads import ibp
from advssm.adv_train.certify import Smooth

from .. import interrupts
from ..errors import ConfigError
from ..experiment.trained_model import load_for_eval
from ..files import write_bytes, write_json
from ..output import emit
from ..progress import TqdmProgress

METHODS = ("smoothing", "ibp")
# the smoothing table's radii, as multiples of sigma (Cohen et al. read their curves up to about 4 sigma)
RADII_IN_SIGMA = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def _floats(text: str | None, option: str, low: float = 0.0, high: float | None = None) -> list[float] | None:
    """``"0.01,0.03"`` -> [0.01, 0.03]; each in [low, high]; a ConfigError naming ``option`` otherwise."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None
    bad = [v for v in values if not (v >= low and (high is None or v <= high))]
    if not values or bad:
        where = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(f"{option} must be numbers in {where}, got {text!r}")
    return sorted(set(values))


@click.command("certify")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="smoothing", show_default=True,
              help="smoothing: randomized smoothing, certified L2 radii of the smoothed classifier (any model); "
                   "ibp: interval bound propagation, verified Linf accuracy of the model itself (LTI layers only).")
@click.option("--sigma", default=0.25, show_default=True, type=click.FloatRange(0, min_open=True),
              help="smoothing: noise standard deviation (train with the same: --method gaussian at run time).")
@click.option("--n0", default=100, show_default=True, type=click.IntRange(min=1),
              help="smoothing: noisy samples that choose the class.")
@click.option("--n", "n_samples", default=1000, show_default=True, type=click.IntRange(min=1),
              help="smoothing: noisy samples that bound its probability (Cohen et al.: 100000).")
@click.option("--alpha", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="smoothing: failure probability of each certificate.")
@click.option("--radii", help="smoothing: comma-separated L2 radii of the table "
                              f"(default: {', '.join(f'{r:g}' for r in RADII_IN_SIGMA)} times sigma).")
@click.option("--eps", "eps_list", help="ibp: comma-separated Linf budgets in [0, 1] (default: the run's eps).")
@click.option("--n-examples", type=click.IntRange(min=1),
              help="Certify the first N test examples (default: those of the run's table row; all without a run).")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="smoothing: noisy copies per forward pass; ibp: examples per bound computation (at most 64).")
@click.option("--dataset", help="Data set (default: the run's, recorded in the checkpoint).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--device", help="cpu, cuda or cuda:N (default: the run's device where it exists, else cpu).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="smoothing: seeds the noise.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="The JSON results (default: <checkpoint>.certify-<method>.json beside it).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="The PNG of certified accuracy (default: <checkpoint>.certify-<method>.png beside it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def certify(checkpoint, method, sigma, n0, n_samples, alpha, radii, eps_list, n_examples, batch_size, dataset,
            data_dir, device, seed, out_path, plot_path, as_json, progress):
    """Certified accuracy: the fraction of test examples proven correct within each radius.

    smoothing (Cohen, Rosenfeld and Kolter 2019) certifies the smoothed classifier g(x) = the class f
    gives most often under Gaussian noise of std sigma, at L2 radius sigma * Phi^-1(pA_low), each
    certificate failing with probability at most alpha; it abstains when it cannot decide. It costs
    n0 + n forward passes per example. ibp bounds the logits of the model itself over the Linf box of
    each eps: an example is verified when no input in the box can change its class (S4, S4D, DSS, S5;
    selective layers are refused). A verified example is one no attack can break.

    \b
    Examples:
      advssm certify runs/X/gaussian/best.safetensors --method smoothing --sigma 0.25 --n 10000
      advssm certify runs/X/pgd-at/best.safetensors --method ibp --eps 0.001,0.003,0.01
      advssm certify model.safetensors --dataset mnist --method smoothing --n-examples 100 --json
    """
    radii_list = _floats(radii, "--radii")
    eps_values = _floats(eps_list, "--eps", 0.0, 1.0)
    if method == "smoothing" and eps_values is not None:
        raise ConfigError("--eps is an ibp setting (Linf budgets); smoothing certifies L2 radii: use --radii")
    if method == "ibp" and radii_list is not None:
        raise ConfigError("--radii is a smoothing setting (L2 radii); ibp verifies Linf budgets: use --eps")
    # smoothing has no eps: a placeholder keeps load_for_eval from asking for one
    eps = eps_values[0] if eps_values else (1.0 if method == "smoothing" else None)
    model, x, y, run_eps, _, device = load_for_eval(checkpoint, dataset, data_dir, n_examples, eps, device)
    bar = TqdmProgress("certify", enabled=progress)

    def step(stage: str, done: int, total: int) -> None:
        interrupts.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt Python swallowed stops here
        bar.on_stage(stage, done, total)

    start = time.perf_counter()
    try:
        with interrupts.handled():
            if method == "smoothing":
                radii_list = radii_list or [round(k * sigma, 6) for k in RADII_IN_SIGMA]
                result = _smoothing(model, x, y, sigma, n0, n_samples, alpha, radii_list, batch_size, seed, step)
            else:
                result = _ibp(model, x, y, eps_values or [run_eps], min(batch_size, 64), step)
    except KeyboardInterrupt:
        bar.close()
        click.echo("\ninterrupted; nothing was written", err=True)
        raise SystemExit(130) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    stem = Path(checkpoint).with_suffix("")
    out_path = Path(out_path) if out_path else Path(f"{stem}.certify-{method}.json")
    plot_path = Path(plot_path) if plot_path else Path(f"{stem}.certify-{method}.png")
    data = {"checkpoint": str(checkpoint), "method": method, "n": len(x), "device": str(device),
            "seconds": round(seconds, 3), **result, "json_file": str(out_path), "plot": str(plot_path)}
    write_json(out_path, data, end="\n")
    write_bytes(plot_path, _plot(data))
    emit(data, as_json, _text(data))


def _smoothing(model, x, y, sigma, n0, n, alpha, radii, batch_size, seed, step) -> dict:
    smooth = Smooth(model, sigma=sigma, seed=seed, batch_size=batch_size)
    predictions, radius, p_lower = [], [], []
    for i in range(len(x)):
        cert = smooth.certify(x[i:i + 1], n0=n0, n=n, alpha=alpha)
        predictions.append(int(cert.prediction[0]))
        radius.append(float(cert.radius[0]))
        p_lower.append(float(cert.p_lower[0]))
        step("smoothing", i + 1, len(x))
    predictions_t, radius_t = torch.tensor(predictions), torch.tensor(radius, dtype=torch.float64)
    correct = predictions_t == y.cpu()
    clean = _clean_accuracy(model, x, y)
    table = [{"radius": r, "certified_acc": float((correct & (radius_t >= r)).double().mean())} for r in radii]
    return {"clean_acc": clean, "settings": {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed,
                                             "batch_size": batch_size},
            "table": table, "abstain_rate": float((predictions_t == -1).double().mean()),
            "forward_passes": smooth.forward_passes,
            "examples": [{"label": int(label), "prediction": p, "radius": r, "p_lower": q}
                         for label, p, r, q in zip(y.tolist(), predictions, radius, p_lower)]}


def _ibp(model, x, y, eps_values, batch, step) -> dict:
    try:
        ibp.check_model(model)
    except ibp.IBPUnsupportedError as exc:
        raise ConfigError(f"{exc}") from None
    verified = {eps: [] for eps in eps_values}
    total = len(eps_values) * len(x)
    for k, eps in enumerate(eps_values):
        for i in range(0, len(x), batch):
            verified[eps].append(ibp.verify(model, x[i:i + batch], y[i:i + batch], eps).cpu())
            step("ibp", k * len(x) + min(i + batch, len(x)), total)
    clean = _clean_accuracy(model, x, y)
    table = [{"eps": eps, "certified_acc": float(torch.cat(v).double().mean())} for eps, v in verified.items()]
    return {"clean_acc": clean, "settings": {"eps": eps_values}, "table": table,
            "examples": [{"label": int(label), "verified": [bool(torch.cat(verified[e])[i]) for e in eps_values]}
                         for i, label in enumerate(y.tolist())]}


def _clean_accuracy(model, x, y, batch: int = 256) -> float:
    """The base model's accuracy on (x, y), in batches."""
    with torch.no_grad():
        correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def _text(data: dict) -> str:
    key = "radius" if data["method"] == "smoothing" else "eps"
    head = (f"checkpoint {data['checkpoint']}  {data['method']}  n {data['n']}  device {data['device']}  "
            f"{data['seconds']:.1f} s")
    settings = ", ".join(f"{k} {v}" for k, v in data["settings"].items() if k != "eps")
    lines = [head] + ([settings] if settings else []) + [f"clean accuracy (base model) {100 * data['clean_acc']:.2f}%"]
    if "abstain_rate" in data:
        lines.append(f"abstained {100 * data['abstain_rate']:.2f}%, {data['forward_passes']} forward passes")
    what = "L2 radius" if key == "radius" else "Linf eps"
    lines += ["", f"| {what} | certified accuracy |", "|---:|---:|"]
    lines += [f"| {row[key]:g} | {100 * row['certified_acc']:.2f}% |" for row in data["table"]]
    lines += ["", f"results: {data['json_file']}", f"plot: {data['plot']}"]
    return "\n".join(lines)


def _plot(data: dict) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    key = "radius" if data["method"] == "smoothing" else "eps"
    xs, ys = [row[key] for row in data["table"]], [100 * row["certified_acc"] for row in data["table"]]
    if key == "radius":  # certified accuracy at every radius, from the per-example radii: a step function
        correct = sorted(e["radius"] for e in data["examples"] if e["prediction"] == e["label"])
        grid = sorted({0.0, *correct, max(xs)})
        # on [g, next grid point) the radii still certified are those > g (every radius is a grid point)
        ax.step(grid, [100 * sum(r > g for r in correct) / data["n"] for g in grid], where="post",
                label=f"sigma {data['settings']['sigma']:g}")
        ax.plot(xs, ys, "o", color="C0")
        ax.set_xlabel("L2 radius")
        title = f"randomized smoothing, n = {data['settings']['n']}, alpha = {data['settings']['alpha']:g}"
    else:
        ax.plot(xs, ys, "o-", label="IBP verified")
        ax.set_xlabel("Linf eps")
        title = "interval bound propagation"
    ax.axhline(100 * data["clean_acc"], color="gray", linestyle="--", label="clean (base model)")
    ax.set(ylabel="certified accuracy (%)", ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
