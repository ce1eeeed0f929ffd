"""Evaluation: oracle metrics from the toy's ground truth (FVD, VBench-style and fidelity metrics follow)."""
