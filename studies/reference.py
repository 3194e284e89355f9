"""The paper's reference figures (Hatamizadeh et al., TMI 2023: the official code's README plots, read off by eye)."""

PAPER_SIGMA0 = {
    "x": [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50],
    "rdlv": [0.50, 0.60, 0.65, 0.63, 0.39, 0.00, -0.03, -0.03, 0.05, -0.04, -0.39],  # client 9 (1 image, batch 1)
    "rdlv_client1": [-0.04, -0.05, -0.05, -0.05, -0.06, -0.10, -0.09, -0.13, -0.15, -0.15, -0.22],  # 8 images, batch 4
    "test_accuracy": [0.965, 0.975, 0.97, 0.94, 0.94, 0.92, 0.92, 0.90, 0.87, 0.85, 0.89],
}

REFERENCES = {"paper_sigma0": PAPER_SIGMA0}
