"""Real loading code on small files written in the real formats."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import UserError
from datamodules.sources import DataConfig, load_pool


def _write_png(path, size=20, rgb=False, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3) if rgb else (size, size), value, dtype=np.uint8)
    arr[: size // 2] = 255 - value
    Image.fromarray(arr).save(path)


def test_folder_with_covid_radiography_layout(tmp_path):
    for cls in ("COVID", "Normal"):
        for i in range(3):
            _write_png(tmp_path / cls / "images" / f"{cls}-{i}.png", value=40 * i)
        (tmp_path / cls / "masks").mkdir()
        _write_png(tmp_path / cls / "masks" / "ignored.png")
    pool = load_pool(DataConfig(source="folder", path=str(tmp_path), image_size=16))
    assert pool.images.shape == (6, 1, 16, 16)
    assert pool.class_names == ["COVID", "Normal"]
    assert pool.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0 <= float(pool.images.min()) and float(pool.images.max()) <= 1
    assert abs(float(pool.images[0, 0, 0, 0]) - 1.0) < 0.02  # 255 - 0 in the top half


def test_folder_rgb_and_forced_grayscale(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            _write_png(tmp_path / cls / f"{i}.jpg", rgb=True)
    assert load_pool(DataConfig(source="folder", path=str(tmp_path), image_size=8)).images.shape == (4, 3, 8, 8)
    assert load_pool(DataConfig(source="folder", path=str(tmp_path), image_size=8, channels=1)).images.shape == (4, 1, 8, 8)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        load_pool(DataConfig(source="folder", path=str(tmp_path / "missing")))
    _write_png(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="holds no PNG or JPEG images"):
        load_pool(DataConfig(source="folder", path=str(tmp_path)))
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="unreadable image .*broken.png"):
        load_pool(DataConfig(source="folder", path=str(tmp_path)))


def test_medmnist_npz_read_from_a_local_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, train_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), train_labels=np.array([[0], [1]] * 3),
             val_images=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), val_labels=np.array([[0], [1]]),
             test_images=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), test_labels=np.array([[1], [0]]))
    pool = load_pool(DataConfig(source="medmnist", path=str(path), image_size=32))
    assert pool.images.shape == (10, 1, 32, 32)
    assert pool.labels.tolist() == [0, 1] * 4 + [1, 0]
    with pytest.raises(UserError, match="MedMNIST file not found"):
        load_pool(DataConfig(source="medmnist", path=str(tmp_path / "nope.npz")))


def test_medmnist_download_only_when_asked(tmp_path, monkeypatch):
    import datamodules.datasets.medmnist as sources

    calls = []

    def fake_download(flag, path):
        calls.append((flag, path))
        np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.array([[0], [1]]))
        return path

    monkeypatch.setattr(sources, "download_medmnist", fake_download)
    path = tmp_path / "p.npz"
    with pytest.raises(UserError):
        load_pool(DataConfig(source="medmnist", path=str(path)))
    assert calls == []
    pool = load_pool(DataConfig(source="medmnist", path=str(path), download=True))
    assert len(calls) == 1 and len(pool) == 2


def test_embedded_sources():
    lfw = load_pool(DataConfig(source="lfw", image_size=32))
    assert lfw.images.shape == (200, 1, 32, 32) and lfw.class_names == ["non_face", "face"]
    assert int((lfw.labels == 1).sum()) == 100
    digits = load_pool(DataConfig(source="digits", image_size=16))
    assert digits.images.shape[1:] == (1, 16, 16) and digits.num_classes == 10
    assert torch.isfinite(digits.images).all()


def test_a_dataset_registered_at_run_time_is_a_data_source(tmp_path):
    """One new file in datamodules/datasets/ is all a dataset needs: here the registration runs in the test."""
    from datamodules.datasets import REGISTRY, register
    from datamodules.pool import ImagePool

    @register(name="checkers")
    def load(cfg: DataConfig) -> ImagePool:
        n = int(cfg.options.get("n", 4))
        images = torch.zeros(2 * n, 1, cfg.image_size, cfg.image_size)
        images[n:, :, ::2, ::2] = 1.0
        return ImagePool(images, torch.tensor([0] * n + [1] * n), ["blank", "checkers"], "checkers")

    try:
        pool = load_pool(DataConfig(source="checkers", image_size=8, channels=3, options={"n": 5}, max_images=6))
        assert pool.images.shape == (6, 3, 8, 8) and pool.labels.tolist().count(1) == 3  # shared steps applied
        assert float(pool.images[pool.labels == 1].mean()) == 0.25
        with pytest.raises(UserError, match="unknown dataset 'nope' .*checkers.*lfw"):
            load_pool(DataConfig(source="nope"))
    finally:
        REGISTRY.unregister("checkers")
