"""The blind user study (the paper's Figure 4): frozen study sets, annotators' votes, and rankings from them.

    build.py     build_study: every model's video for the same first frames and noise, content-hash names, manifest
    votes.py     VoteStore: items served, files fetched, votes (UNIQUE per judgement, one transaction per item),
                 the play gate; annotators.py its annotators (scrypt hashes, login limits)
    store_sqlite.py, store_postgres.py   its two backends: an SQLite file (the default), a PostgreSQL database
    store.py     open_store(path or postgresql:// URL); read_votes, export_votes of a database without a store
    ranking.py   share chosen best, win rates, Bradley-Terry with bootstrap intervals, attention flags, agreement
"""
from workbench.study.build import CRITERIA, Study, build_study, load_study, parse_model_spec
from workbench.study.ranking import (StudyResults, agreement, attention_flags, best_share, bootstrap_bt,
                                     bradley_terry, pairwise_outcomes, study_results, win_matrix)
from workbench.study.store import export_votes, open_store, read_votes
from workbench.study.votes import MODES, PAIRWISE_CHOICES, NotReady, Shown, Submitted, VoteStore

__all__ = ["CRITERIA", "MODES", "PAIRWISE_CHOICES", "NotReady", "Shown", "Study", "StudyResults", "Submitted",
           "VoteStore", "agreement", "attention_flags", "best_share", "bootstrap_bt", "bradley_terry", "build_study",
           "export_votes", "load_study", "open_store", "pairwise_outcomes", "parse_model_spec", "read_votes",
           "study_results", "win_matrix"]
