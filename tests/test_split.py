import pytest
import torch

from common.errors import UserError
from datamodules import ClientSpec, SplitConfig, load_pool, make_split, paper9_layout
from datamodules.sources import DataConfig


@pytest.fixture(scope="module")
def pool():
    return load_pool(DataConfig(source="lfw", image_size=16))


def test_split_is_deterministic_and_respects_sizes(pool):
    cfg = SplitConfig(clients=[ClientSpec(8, 4), ClientSpec(32, 8), ClientSpec(1, 1, ["face"])])
    a = make_split(pool, cfg, 0.2, seed=3)
    b = make_split(pool, cfg, 0.2, seed=3)
    c = make_split(pool, cfg, 0.2, seed=4)
    assert [len(i) for i in a.client_indices] == [8, 32, 1]
    assert all(torch.equal(x, y) for x, y in zip(a.client_indices, b.client_indices))
    assert torch.equal(a.test_indices, b.test_indices)
    assert not all(torch.equal(x, y) for x, y in zip(a.client_indices, c.client_indices))
    used = torch.cat(a.client_indices + [a.test_indices])
    assert len(set(used.tolist())) == len(used)  # disjoint, and disjoint from the test set
    assert int(pool.labels[a.client_indices[2]][0]) == pool.class_names.index("face")
    assert len(a.test_indices) == 40  # 20% of 200, stratified


def test_dirichlet_split_sizes_and_skew(pool):
    cfg = SplitConfig(clients=[ClientSpec(20, 4) for _ in range(5)], partition="dirichlet", dirichlet_alpha=0.1)
    split = make_split(pool, cfg, 0.2, seed=0)
    assert [len(i) for i in split.client_indices] == [20] * 5
    skews = [max(torch.bincount(pool.labels[i], minlength=2)).item() / 20 for i in split.client_indices]
    assert max(skews) >= 0.9  # alpha 0.1 gives strongly one-class clients


def test_paper9_layout_scales_to_the_pool():
    layout = paper9_layout(160)
    assert len(layout) == 9
    assert sum(c.images for c in layout) <= 160
    assert (layout[-1].images, layout[-1].batch_size) == (1, 1)
    assert [c.batch_size for c in layout] == [4, 4, 4, 4, 8, 8, 8, 8, 1]
    assert all(c.images >= c.batch_size for c in layout)
    full = paper9_layout(5000)
    assert [c.images for c in full] == [8, 32, 128, 512, 8, 32, 128, 512, 1]


def test_too_many_images_and_oversized_batches_are_user_errors(pool):
    with pytest.raises(UserError, match="need 500 images"):
        make_split(pool, SplitConfig(clients=[ClientSpec(500, 4)]), 0.2, 0)
    with pytest.raises(UserError, match="batch size 8 is larger than its 4"):
        make_split(pool, SplitConfig(clients=[ClientSpec(4, 8)]), 0.2, 0)


def test_the_prior_is_built_from_images_no_client_holds(tmp_path, monkeypatch):
    """Issue 23: the attacker's prior image (and its class means) come from the test split and the training
    images dealt to no client. Changing every client's images leaves prior.safetensors bit-identical;
    changing one image no client holds changes it."""
    import dataclasses

    import federation.federation as federation
    from common.files import load_tensors
    from tests.conftest import tiny_train_config

    sim = federation.Federation(tiny_train_config(tmp_path / "a"))
    split, pool = sim.split, sim.pool
    public = split.public_indices
    dealt = torch.cat(split.client_indices)
    assert not torch.isin(public, dealt).any() and torch.isin(split.test_indices, public).all()
    assert len(public) == len(pool) - len(dealt)  # everything else: test split and undealt training images
    (tmp_path / "a").mkdir()
    sim.write_setup(tmp_path / "a")
    before = load_tensors(tmp_path / "a" / "prior.safetensors")
    assert torch.allclose(before["mean"], pool.images[public].mean(0))

    real_load = federation.load_pool

    def altered(indices):
        def load(cfg):
            p = real_load(cfg)
            images = p.images.clone()
            images[indices] = 1.0 - images[indices]
            return dataclasses.replace(p, images=images)
        return load

    for indices, same in ((dealt, True), (public[:1], False)):
        monkeypatch.setattr(federation, "load_pool", altered(indices))
        other = federation.Federation(tiny_train_config(tmp_path / "b"))
        assert all(torch.equal(a, b) for a, b in zip(other.split.client_indices, split.client_indices))
        (tmp_path / "b").mkdir(exist_ok=True)
        other.write_setup(tmp_path / "b")
        after = load_tensors(tmp_path / "b" / "prior.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before) is same, (indices, same)
