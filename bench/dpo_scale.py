"""Where trajectory alignment's errors and gradients come from, per error space, as JSON (issue: TA's beta scale).

    python bench/dpo_scale.py --model experiments/toy/da --pairs PAIRS [--batches 8] [--out FILE]

At the start of TA the LoRA is zero, so model = reference and Eq. (11)'s gradient is
beta/4 * grad(e_w - e_l) + lambda_RF * grad(e_w). For `dpo.error` velocity (the paper's ||v - F||^2) and x0
(||x0 - x0_hat||^2 = t^2 ||v - F||^2) this prints, on the same pair batches, t and noise:
  - the share of the mean error that comes from t < 0.1 (velocity space weights x0 errors by 1/t^2),
  - the per-sample error and the spread of e_w - e_l (what beta multiplies),
  - the norms of the DPO and reflow gradients on the LoRA and their ratio at the config's beta and lambda_RF.
"""
from __future__ import annotations

import argparse

import torch

from workbench.data import build_dataset, collate
from workbench.methods import TrainStep, build_method, load_config
from workbench.models import build_backbone

from _emit import emit  # bench/_emit.py (the script's folder is on sys.path)


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)).item()


def measure(config: str, overrides: list[str], batches: int) -> dict:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    net, encoders = build_backbone(cfg.model)
    method = build_method(cfg, net, encoders)
    params = [p for p in net.parameters() if p.requires_grad]
    data = build_dataset(cfg.data, "train")
    b = cfg.train.batch_size
    rows = []
    for i in range(batches):
        batch = collate([data[j] for j in range(i * b, (i + 1) * b)])
        step = TrainStep(i, torch.Generator().manual_seed(i), {"model": net}, frozenset({"model"}))
        e = method.pair_errors(batch, step)
        err_w, err_l, t = e.err_w, e.err_l, e.t
        dpo_push = 0.25 * cfg.dpo.beta * (err_w - err_l).mean()          # Eq. (11)'s gradient at model = reference
        rf_pull = cfg.dpo.lambda_rf * err_w.mean()
        rows.append({"t": t, "err_w": err_w.detach(), "gap": (err_w - err_l).detach(),
                     "g_dpo": grad_norm(dpo_push, params), "g_rf": grad_norm(rf_pull, params)})
    t = torch.cat([r["t"] for r in rows])
    err_w = torch.cat([r["err_w"] for r in rows])
    gap = torch.cat([r["gap"] for r in rows])
    g_dpo = sum(r["g_dpo"] for r in rows) / batches
    g_rf = sum(r["g_rf"] for r in rows) / batches
    return {"beta": cfg.dpo.beta, "lambda_rf": cfg.dpo.lambda_rf, "pairs": len(t),
            "err_w_mean": err_w.mean().item(), "err_w_median": err_w.median().item(),
            "share_of_err_from_t_below_0.1": (err_w[t < 0.1].sum() / err_w.sum()).item(),
            "gap_std": gap.std().item(), "beta_x_gap_std": cfg.dpo.beta * gap.std().item(),
            "grad_dpo": g_dpo, "grad_reflow": g_rf, "dpo_over_reflow": g_dpo / g_rf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/toy/dpo.yaml")
    ap.add_argument("--model", default="experiments/toy/da", help="the aligned model: a run or model folder")
    ap.add_argument("--pairs", required=True, help="a preference folder (python -m workbench preferences)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="more config overrides, key=value")
    ap.add_argument("--out")
    args = ap.parse_args()
    common = [f"model.weights={args.model}/model.safetensors", f"data.preferences={args.pairs}", *args.set]
    res = {space: measure(args.config, [*common, f"dpo.error={space}"], args.batches) for space in ("velocity", "x0")}
    res["command"] = f"python bench/dpo_scale.py --model {args.model} --pairs {args.pairs} --batches {args.batches}"
    emit(res, args.out)


if __name__ == "__main__":
    main()
