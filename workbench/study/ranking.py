"""Votes -> rankings: the share of times each entrant was chosen best, pairwise win rates, Bradley-Terry strengths
with bootstrap intervals, attention-check flags and inter-annotator agreement.

Conventions (the arena form, lm-sys/FastChat `fastchat/serve/monitor/rating_systems.py`):
- An entrant is a model at a step count, labelled `method@steps` (`teacher@8`).
- Every vote becomes pairwise outcomes (a, b, y) with y = 1 when a wins, 0 when b wins, 1/2 for a tie:
  a best-of-N vote is N - 1 outcomes, the chosen video beating each other video shown; a pairwise vote is
  one outcome: A, B, or tie. "both_bad" counts as a tie by default (FastChat's "tie (bothbad)": neither is
  preferred), or is dropped with `both_bad="drop"`.
- Bradley-Terry: P(a beats b) = sigmoid(beta_a - beta_b); strengths are the log-odds beta, mean 0; a tie is half
  a win and half a loss in the likelihood.
- Bootstrap intervals resample votes, not outcomes: the N - 1 outcomes of one best-of-N vote stay together.
- Attention items (they show the real clip, method `real`) enter no ranking; they flag annotators, whose votes
  are then left out and counted.

A votes table has one row per vote with columns id, annotator, item, criterion, mode, shown (list of
{method, steps, video} per slot) and choice (best_of_n: the slot index; pairwise: A, B, tie, both_bad), as
`VoteStore.votes()` returns it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from workbench.study.build import REAL
from workbench.study.votes import chosen_slot

__all__ = ["StudyResults", "agreement", "attention_flags", "best_share", "bootstrap_bt", "bradley_terry", "label",
           "pairwise_outcomes", "study_results", "win_matrix"]

OUTCOME_COLUMNS = ["vote", "criterion", "annotator", "item", "a", "b", "y"]


def label(slot: dict) -> str:
    """An entrant's name in results: `method@steps`."""
    return f"{slot['method']}@{slot['steps']}"


def is_attention(shown: list[dict]) -> bool:
    return any(s["method"] == REAL for s in shown)


def _ranked(votes: pd.DataFrame) -> pd.DataFrame:
    """The votes that enter rankings: not on attention items."""
    if votes.empty:
        return votes
    return votes[[not is_attention(s) for s in votes["shown"]]]


def pairwise_outcomes(votes: pd.DataFrame, both_bad: str = "tie") -> pd.DataFrame:
    """One row per pairwise outcome: vote (its id), criterion, annotator, item, a, b, y (1: a won, 0: b won, 0.5:
    tie). A best-of-N choice of slot c gives (c, j, 1) for every other slot j. Attention items are skipped."""
    if both_bad not in ("tie", "drop"):
        raise ValueError(f"both_bad {both_bad!r}: expected 'tie' or 'drop'")
    rows = []
    for v in _ranked(votes).itertuples(index=False):
        names = [label(s) for s in v.shown]
        if v.mode == "best_of_n":
            c = chosen_slot(v.choice, v.mode)
            rows += [(v.id, v.criterion, v.annotator, v.item, names[c], n, 1.0) for j, n in enumerate(names) if j != c]
        elif str(v.choice) in ("A", "B", "tie") or (str(v.choice) == "both_bad" and both_bad == "tie"):
            y = {"A": 1.0, "B": 0.0}.get(str(v.choice), 0.5)
            rows.append((v.id, v.criterion, v.annotator, v.item, names[0], names[1], y))
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def best_share(votes: pd.DataFrame) -> pd.DataFrame:
    """Figure 4's bars: per criterion and entrant, best-of-N votes that chose it, votes that showed it, and the
    share (chosen / shown)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for v in _ranked(votes).itertuples(index=False):
        if v.mode != "best_of_n":
            continue
        c = chosen_slot(v.choice, v.mode)
        for j, s in enumerate(v.shown):
            k = counts.setdefault((v.criterion, label(s)), [0, 0])
            k[0] += j == c
            k[1] += 1
    df = pd.DataFrame([(c, m, n, shown) for (c, m), (n, shown) in counts.items()],
                      columns=["criterion", "entrant", "chosen", "votes"])
    df["share"] = df["chosen"] / df["votes"]
    return df.sort_values(["criterion", "share"], ascending=[True, False], ignore_index=True)


def win_matrix(outcomes: pd.DataFrame, labels: list[str] | None = None) -> pd.DataFrame:
    """Row i, column j: the share of outcomes between i and j that i won (a tie half); NaN where they never met."""
    labels = labels or sorted(set(outcomes["a"]) | set(outcomes["b"]))
    idx = {n: i for i, n in enumerate(labels)}
    wins = np.zeros((len(labels), len(labels)))
    games = np.zeros_like(wins)
    for a, b, y in zip(outcomes["a"], outcomes["b"], outcomes["y"]):
        i, j = idx[a], idx[b]
        wins[i, j] += y
        wins[j, i] += 1 - y
        games[i, j] += 1
        games[j, i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(games > 0, wins / games, np.nan)
    return pd.DataFrame(share, index=labels, columns=labels)


def _fit_logistic(a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray, K: int, reg: float) -> np.ndarray:
    """Bradley-Terry by weighted logistic regression: minimise the mean negative log-likelihood plus reg/2 |beta|^2
    (the tiny ridge keeps strengths finite when an entrant never lost or never won; it also centres them)."""
    W = w.sum()

    def f(beta):
        d = beta[a] - beta[b]
        nll = w @ (y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d)) / W
        g = w * (expit(d) - y) / W  # d nll / d d
        grad = np.bincount(a, g, K) - np.bincount(b, g, K) + reg * beta
        return nll + 0.5 * reg * beta @ beta, grad

    res = minimize(f, np.zeros(K), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15,
                                                                            "maxiter": 10_000})
    return res.x - res.x.mean()


def _fit_mm(a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray, K: int, tol: float = 1e-12,
            max_iter: int = 100_000) -> np.ndarray:
    """Bradley-Terry by Hunter's MM iteration (Ann. Statist. 2004, Eq. 3): p_i <- W_i / sum_j n_ij / (p_i + p_j),
    with W_i the wins of i (ties half). Needs every entrant to have won and lost something."""
    wins = np.bincount(a, w * y, K) + np.bincount(b, w * (1 - y), K)
    losses = np.bincount(a, w * (1 - y), K) + np.bincount(b, w * y, K)
    if (wins <= 0).any() or (losses <= 0).any():
        raise ValueError("Bradley-Terry by MM: an entrant never won or never lost; use method='logistic'")
    n = np.zeros((K, K))
    np.add.at(n, (a, b), w)
    n = n + n.T
    p = np.ones(K)
    for _ in range(max_iter):
        new = wins / (n / (p[:, None] + p[None, :])).sum(axis=1)
        new /= np.exp(np.log(new).mean())
        if np.abs(np.log(new) - np.log(p)).max() < tol:
            p = new
            break
        p = new
    beta = np.log(p)
    return beta - beta.mean()


def _codes(outcomes: pd.DataFrame, labels: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels = labels or sorted(set(outcomes["a"]) | set(outcomes["b"]))
    idx = {n: i for i, n in enumerate(labels)}
    return labels, outcomes["a"].map(idx).to_numpy(int), outcomes["b"].map(idx).to_numpy(int)


def bradley_terry(outcomes: pd.DataFrame, weights: np.ndarray | None = None, method: str = "logistic",
                  reg: float = 1e-6, labels: list[str] | None = None) -> pd.Series:
    """Bradley-Terry strengths (log-odds, mean 0) of every entrant in `outcomes` (see `pairwise_outcomes`), by
    logistic regression (default) or MM; `weights` per outcome row (default 1)."""
    if method not in ("logistic", "mm"):
        raise ValueError(f"method {method!r}: expected 'logistic' or 'mm'")
    labels, a, b = _codes(outcomes, labels)
    y = outcomes["y"].to_numpy(float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    if len(labels) < 2 or w.sum() <= 0:
        return pd.Series(np.zeros(len(labels)), index=labels, name="strength")
    beta = _fit_logistic(a, b, y, w, len(labels), reg) if method == "logistic" else _fit_mm(a, b, y, w, len(labels))
    return pd.Series(beta, index=labels, name="strength")


def bootstrap_bt(outcomes: pd.DataFrame, rounds: int = 200, level: float = 0.95, seed: int = 0,
                 reg: float = 1e-6) -> pd.DataFrame:
    """Bradley-Terry strengths with percentile bootstrap intervals: each round resamples the votes (all outcomes of
    a vote together) with replacement and refits. Columns strength (fit on all votes), lo, hi, outcomes (how
    many outcomes involve the entrant); sorted strongest first."""
    cols = ["strength", "lo", "hi", "outcomes"]
    if outcomes.empty:
        return pd.DataFrame(columns=cols)
    labels, a, b = _codes(outcomes, None)
    y = outcomes["y"].to_numpy(float)
    point = bradley_terry(outcomes, reg=reg, labels=labels)
    # collapse to unique (a, b, y) rows; a round's weight of a row = how often its vote was drawn
    keys, key_of_row = np.unique(np.stack([a, b, y * 2]), axis=1, return_inverse=True)
    vote_codes, vote_of_row = np.unique(outcomes["vote"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, len(labels)))
    for r in range(rounds):
        counts = rng.multinomial(len(vote_codes), np.full(len(vote_codes), 1 / len(vote_codes)))
        w = np.bincount(key_of_row.ravel(), counts[vote_of_row.ravel()], keys.shape[1])
        draws[r] = _fit_logistic(keys[0].astype(int), keys[1].astype(int), keys[2] / 2, w, len(labels), reg)
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    n = pd.concat([outcomes["a"], outcomes["b"]]).value_counts()
    df = pd.DataFrame({"strength": point.to_numpy(), "lo": lo, "hi": hi,
                       "outcomes": n.reindex(labels).to_numpy()}, index=pd.Index(labels, name="entrant"))
    return df.sort_values("strength", ascending=False)


def attention_flags(votes: pd.DataFrame, max_fail: float = 0.2) -> pd.DataFrame:
    """Per annotator: attention-check votes, how many missed the real clip (best-of-N: another slot chosen;
    pairwise: the corrupted side, a tie or both_bad), and flagged = missed / checks > max_fail."""
    stats: dict[str, list[int]] = {a: [0, 0] for a in votes["annotator"]} if not votes.empty else {}
    for v in votes.itertuples(index=False):
        if not is_attention(v.shown):
            continue
        c = chosen_slot(v.choice, v.mode)
        s = stats[v.annotator]
        s[0] += 1
        s[1] += c is None or v.shown[c]["method"] != REAL
    df = pd.DataFrame([(a, n, f) for a, (n, f) in stats.items()], columns=["annotator", "checks", "failed"])
    df["flagged"] = (df["checks"] > 0) & (df["failed"] > max_fail * df["checks"])
    return df.sort_values("annotator", ignore_index=True)


def _category(v) -> str:
    c = chosen_slot(v.choice, v.mode)
    return str(v.choice) if c is None else label(v.shown[c])


def agreement(votes: pd.DataFrame) -> pd.DataFrame:
    """Inter-annotator agreement per criterion and mode, on the judgements several annotators made: the same item,
    criterion and mode with the same entrants shown (slot order aside). A judgement's category is the chosen
    entrant (or tie / both_bad). Columns: groups (judgements with >= 2 annotators), ratings, agreement (the share
    of annotator pairs in a group who chose alike, pooled over groups), chance (what random choices would give)
    and fleiss_kappa (Fleiss 1971, with the per-group rater count allowed to vary)."""
    cols = ["criterion", "mode", "groups", "ratings", "agreement", "chance", "fleiss_kappa"]
    groups: dict[tuple, dict[str, int]] = {}
    for v in _ranked(votes).itertuples(index=False):
        key = (v.criterion, v.mode, v.item, tuple(sorted(label(s) for s in v.shown)))
        cats = groups.setdefault(key, {})
        cat = _category(v)
        cats[cat] = cats.get(cat, 0) + 1
    out = []
    for crit, mode in sorted({k[:2] for k in groups}):
        tables = [cats for k, cats in groups.items() if k[:2] == (crit, mode) and sum(cats.values()) >= 2]
        if not tables:
            continue
        cats = sorted({c for t in tables for c in t})
        n_ij = np.array([[t.get(c, 0) for c in cats] for t in tables], float)
        n_i = n_ij.sum(1)
        same, pairs = ((n_ij * (n_ij - 1)).sum(1) / 2).sum(), (n_i * (n_i - 1) / 2).sum()
        P_i = ((n_ij ** 2).sum(1) - n_i) / (n_i * (n_i - 1))
        p_j = n_ij.sum(0) / n_i.sum()
        P_e = (p_j ** 2).sum()
        kappa = (P_i.mean() - P_e) / (1 - P_e) if P_e < 1 else np.nan
        shown = len(next(k for k in groups if k[:2] == (crit, mode))[3])
        chance = 1 / shown if mode == "best_of_n" else 1 / 4  # pairwise: A, B, tie, both_bad
        out.append((crit, mode, len(tables), int(n_i.sum()), same / pairs, chance, kappa))
    return pd.DataFrame(out, columns=cols)


@dataclass
class StudyResults:
    """Everything the Results tab shows for one study, from its votes."""
    attention: pd.DataFrame                                         # per annotator: checks, failed, flagged
    flagged: list[str]                                              # annotators left out
    excluded_votes: int                                             # their votes on ranked items, left out
    counted_votes: int                                              # votes on ranked items that count
    best_share: pd.DataFrame                                        # criterion, entrant, chosen, votes, share
    strengths: pd.DataFrame                                         # criterion, entrant, strength, lo, hi, outcomes
    win_rates: dict[str, pd.DataFrame] = field(default_factory=dict)  # criterion -> win-rate matrix
    agreement: pd.DataFrame = field(default_factory=pd.DataFrame)


def study_results(votes: pd.DataFrame, rounds: int = 200, level: float = 0.95, seed: int = 0,
                  max_fail: float = 0.2, both_bad: str = "tie") -> StudyResults:
    """Rankings per criterion from a votes table, flagged annotators' votes excluded (and counted)."""
    att = attention_flags(votes, max_fail)
    flagged = sorted(att.loc[att["flagged"], "annotator"]) if not att.empty else []
    ranked = _ranked(votes)
    kept = ranked[~ranked["annotator"].isin(flagged)] if not ranked.empty else ranked
    outcomes = pairwise_outcomes(kept, both_bad)
    strengths, wins = [], {}
    for crit, part in outcomes.groupby("criterion", sort=True):
        bt = bootstrap_bt(part, rounds, level, seed)
        strengths.append(bt.reset_index().assign(criterion=crit))
        wins[crit] = win_matrix(part, list(bt.index))
    cols = ["criterion", "entrant", "strength", "lo", "hi", "outcomes"]
    return StudyResults(
        attention=att, flagged=flagged, excluded_votes=len(ranked) - len(kept), counted_votes=len(kept),
        best_share=best_share(kept),
        strengths=pd.concat(strengths, ignore_index=True)[cols] if strengths else pd.DataFrame(columns=cols),
        win_rates=wins, agreement=agreement(kept))
