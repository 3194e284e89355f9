"""The paper's reference figures (official README plots, read off by eye; paper.md section 6)."""

PAPER_SIGMA0 = {
    "x": [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50],
    "rdlv": [0.50, 0.60, 0.65, 0.63, 0.39, 0.00, -0.03, -0.03, 0.05, -0.04, -0.39],  # client 9 (1 image, batch 1)
    "rdlv_client1": [-0.04, -0.05, -0.05, -0.05, -0.06, -0.10, -0.09, -0.13, -0.15, -0.15, -0.22],  # 8 images, batch 4
    "test_accuracy": [0.965, 0.975, 0.97, 0.94, 0.94, 0.92, 0.92, 0.90, 0.87, 0.85, 0.89],
}

PAPER_PER_ROUND = {"rounds": [20, 40, 60, 80], "client9_rdlv": [0.69, 0.50, 0.42, 0.56], "client1_rdlv": -0.05}

REFERENCES = {"paper_sigma0": PAPER_SIGMA0}


def sigma0_markdown() -> str:
    ref = PAPER_SIGMA0
    head = "| sigma0 | " + " | ".join(str(v) for v in ref["x"]) + " |"
    sep = "|---" * (len(ref["x"]) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(f"{v:g}" for v in ref[key]) + " |"
            for name, key in (("client 9 RDLV", "rdlv"), ("client 1 RDLV", "rdlv_client1"), ("test accuracy", "test_accuracy"))]
    return "\n".join([head, sep, *rows])
