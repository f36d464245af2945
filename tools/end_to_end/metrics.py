"""What a policy's cache does to the next-token distribution, against the full cache's."""

import numpy as np


def compare(full, policy):
    """full, policy: log-probabilities [steps, vocab] (float64). Per-run figures:
    KL(full || policy) per step (mean, p95, max), top-1 agreement, and the first step where the
    two greedy choices differ (`steps` and diverged False when they never do)."""
    p = full.exp()
    kl = (p * (full - policy)).sum(dim=-1).clamp_min(0).cpu().numpy()
    agree = (full.argmax(dim=-1) == policy.argmax(dim=-1)).cpu().numpy()
    steps = len(agree)
    differs = np.flatnonzero(~agree)
    return {
        "steps": steps,
        "next_token_kl_mean": float(kl.mean()) if steps else float("nan"),
        "next_token_kl_p95": float(np.percentile(kl, 95)) if steps else float("nan"),
        "next_token_kl_max": float(kl.max()) if steps else float("nan"),
        "top1_agreement": float(agree.mean()) if steps else float("nan"),
        "divergence_step": int(differs[0]) if len(differs) else steps,
        "diverged": bool(len(differs)),
        "per_step_kl": kl,
        "per_step_agree": agree,
    }

