"""Evaluation: FVD (fvd.py), VBench-I2V dimensions (vbench.py), PSNR/SSIM (fidelity.py), toy oracle
metrics (oracle.py), the frozen evaluation networks (features.py), and the results table (report.py)."""
