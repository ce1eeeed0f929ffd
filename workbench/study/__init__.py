"""The blind user study (the paper's Figure 4): frozen study sets, annotators' votes, and rankings from them.

    build.py     build_study: every model's video for the same first frames and noise, content-hash names, manifest
    votes.py     VoteStore: annotators (scrypt hashes), items served, votes (SQLite, UNIQUE per judgement)
    ranking.py   share chosen best, win rates, Bradley-Terry with bootstrap intervals, attention flags, agreement
"""
from workbench.study.build import CRITERIA, Study, build_study, load_study, parse_model_spec
from workbench.study.ranking import (StudyResults, agreement, attention_flags, best_share, bootstrap_bt,
                                     bradley_terry, pairwise_outcomes, study_results, win_matrix)
from workbench.study.votes import MODES, PAIRWISE_CHOICES, Shown, VoteStore, export_votes, read_votes

__all__ = ["CRITERIA", "MODES", "PAIRWISE_CHOICES", "Shown", "Study", "StudyResults", "VoteStore", "agreement",
           "attention_flags", "best_share", "bootstrap_bt", "bradley_terry", "build_study", "export_votes",
           "load_study", "pairwise_outcomes", "parse_model_spec", "read_votes", "study_results", "win_matrix"]
