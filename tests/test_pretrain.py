"""pretrain-backbone: image-level initialisation that model.pretrained loads back exactly."""
import pytest
import torch

from pdsl.errors import ConfigError
from pdsl.model.backbone import build_backbone


def test_pretrain_writes_loadable_backbone(tmp_path):
    from pdsl.datasets import prepare_data
    from pdsl.engine.pretrain import pretrain_backbone

    prepare_data("synthetic", tmp_path / "t.json", "train", num_images=8, seed=2, progress=False)
    r = pretrain_backbone(tmp_path / "t.json", tmp_path / "b.pth", epochs=2, batch_size=4,
                          val_manifest=tmp_path / "t.json", threads=1)
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    assert 0 <= r["history"][-1]["val_mAP"] <= 100
    saved = torch.load(tmp_path / "b.pth", weights_only=True)["model"]
    bb = build_backbone("tiny", pretrained=tmp_path / "b.pth")  # frozen BN by default
    own = bb.state_dict()
    for k, v in saved.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(own[k], v), k
    assert not any(torch.equal(own[k], torch.zeros_like(own[k])) for k in own if "running_var" in k)
    with pytest.raises(ConfigError, match="no torchvision weights"):
        build_backbone("tiny", pretrained="torchvision")
    torch.save({"model": {"body.0.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        build_backbone("tiny", pretrained=tmp_path / "bad.pth")
