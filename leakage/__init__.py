"""Leakage measurement: SSIM/PSNR/LPIPS, one-to-one matching, RDLV and its robust companions, figures."""
