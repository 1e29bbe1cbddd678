"""The ATSS model apart from MMDetection parity: shapes, edge-case losses, freezing, presets,
batch consistency and a small preset that overfits one generated image."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from atss_cli.errors import AtssError
from atss_cli.model import ATSS, PRESETS, build_atss, build_atss_preset
from atss_cli.model.anchors import decode, encode


def tiny(num_classes: int = 3, **kw) -> ATSS:
    torch.manual_seed(0)
    return build_atss_preset("tiny", num_classes, **kw)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("h,w", [(64, 96), (77, 101), (33, 250), (129, 31)])
def test_output_shapes_any_size(h, w):
    model = tiny().eval()
    images = torch.randn(2, 3, h, w)
    with torch.no_grad():
        cls, box, ctr = model(images)
    assert len(cls) == len(box) == len(ctr) == 5
    fh, fw = _ceil(h, 8), _ceil(w, 8)
    for level in range(5):
        assert cls[level].shape == (2, 3, fh, fw)
        assert box[level].shape == (2, 4, fh, fw)
        assert ctr[level].shape == (2, 1, fh, fw)
        assert box[level].dtype == torch.float32
        fh, fw = _ceil(fh, 2), _ceil(fw, 2)
    # loss and predict work at such sizes too (valid flags clipped to the feature maps).
    model.train()
    t = [{"boxes": torch.tensor([[2.0, 3.0, w - 5.0, h - 2.0]]), "labels": torch.tensor([1]),
          "img_shape": (h, w)}] * 2
    losses = model.loss(images, t)
    assert all(math.isfinite(v.item()) for v in losses.values())
    model.eval()
    dets = model.predict(images, [(h, w)] * 2, [(0.5, 2.0)] * 2)
    assert len(dets) == 2 and all(d["boxes"].shape[1] == 4 for d in dets)


def _loss_and_grads(model, images, targets):
    model.zero_grad(set_to_none=True)
    model.train()
    outputs = model(images)
    for level_outputs in outputs:
        for o in level_outputs:
            o.retain_grad()
    losses = model.loss_from_outputs(*outputs, targets)
    sum(losses.values()).backward()
    return losses, outputs


@pytest.mark.parametrize("case", ["no_gt", "tiny_gt", "border_gts", "mixed"])
def test_losses_finite_in_edge_cases(case):
    model = tiny()
    images = torch.randn(2, 3, 96, 128)
    shapes = [(96, 128), (70, 100)]
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    cases = {
        "no_gt": [none, none],
        "tiny_gt": [{"boxes": torch.tensor([[40.0, 40.0, 40.5, 40.7]]), "labels": torch.tensor([2])}] * 2,
        "border_gts": [{"boxes": torch.tensor([[0.0, 0.0, 30.0, 20.0], [100.0, 60.0, 128.0, 96.0],
                                               [0.0, 0.0, 128.0, 96.0]]),
                        "labels": torch.tensor([0, 1, 2])},
                       {"boxes": torch.tensor([[0.0, 50.0, 100.0, 70.0]]), "labels": torch.tensor([1])}],
        "mixed": [none, {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([0])}],
    }
    targets = [{**t, "img_shape": s, "image_id": 7, "scale_factor": (1.0, 1.0)}
               for t, s in zip(cases[case], shapes)]
    losses, (cls, box, ctr) = _loss_and_grads(model, images, targets)
    for key, value in losses.items():
        assert math.isfinite(value.item()) and value.item() >= 0, (key, value)
    # Every output is in the graph, positives or not; gradients finite.
    for o in cls + box + ctr:
        assert o.grad is not None and torch.isfinite(o.grad).all()
    if case == "no_gt":
        assert losses["loss_bbox"].item() == 0 and losses["loss_centerness"].item() == 0
        assert losses["loss_cls"].item() > 0
    if case in ("border_gts", "mixed"):
        assert losses["loss_bbox"].item() > 0


def test_frozen_stem_and_layer1_and_frozen_bn_stats():
    torch.manual_seed(0)
    model = build_atss(num_classes=4, depth=18, fpn_channels=64, head_channels=64, stacked_convs=1)
    model.train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "img_shape": (64, 64)}]
    losses = model.loss(torch.randn(1, 3, 64, 64), targets)
    sum(losses.values()).backward()
    bb = model.backbone
    for module in (bb.conv1, bb.bn1, bb.layer1):
        for p in module.parameters():
            assert not p.requires_grad and p.grad is None
    for name in ("layer2", "layer3", "layer4"):
        params = list(getattr(bb, name).parameters())
        assert all(p.requires_grad and p.grad is not None for p in params), name
    assert bb.layer2[0].bn1.weight.grad is not None  # BN affine weights of layers 2-4 train
    for k, v in model.backbone.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats[k]), k
    assert all(p.grad is not None for p in model.neck.parameters())
    assert all(p.grad is not None for p in model.bbox_head.parameters())


def test_tiny_preset_trains_every_stage_and_norm():
    model = tiny()
    assert PRESETS["tiny"]["frozen_stages"] == -1 and PRESETS["tiny"]["norm_eval"] is False
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "img_shape": (64, 64)}]
    losses = model.loss(torch.randn(1, 3, 64, 64), targets)
    sum(losses.values()).backward()
    assert all(p.requires_grad and p.grad is not None for p in model.parameters())
    assert not torch.equal(before, model.backbone.bn1.running_mean)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=42), "depth"),
    (dict(head_channels=100), "GroupNorm"),
    (dict(frozen_stages=7), "frozen_stages"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_arguments_raise_atss_error(kwargs, message):
    with pytest.raises(AtssError, match=message):
        build_atss(**kwargs)
    with pytest.raises(AtssError, match="unknown model preset"):
        build_atss_preset("huge")


def test_single_image_equals_the_image_repeated():
    """DETR's check: a batch of one image twice gives that image's losses and detections."""
    model = tiny()
    images = torch.randn(1, 3, 64, 96)
    t = {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]]),
         "labels": torch.tensor([0, 2]), "img_shape": (60, 90)}
    model.train()
    model.backbone.eval()  # batch statistics would differ between B=1 and B=2 otherwise
    with torch.no_grad():
        one = model.loss(images, [t])
        two = model.loss(images.repeat(2, 1, 1, 1), [t, t])
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-5, atol=1e-6), key
    model.eval()
    d1 = model.predict(images, [(60, 90)], [(0.5, 0.5)])[0]
    d2 = model.predict(images.repeat(2, 1, 1, 1), [(60, 90)] * 2, [(0.5, 0.5)] * 2)
    for d in d2:
        for key in ("boxes", "scores", "labels"):
            assert torch.allclose(d[key].float(), d1[key].float(), atol=1e-5), key


def test_box_coder_round_trip_and_clamp():
    anchors = torch.tensor([[-32.0, -32.0, 32.0, 32.0], [100.0, 50.0, 164.0, 114.0]])
    boxes = torch.tensor([[-10.0, -5.0, 20.0, 40.0], [90.0, 60.0, 200.0, 100.0]])
    assert torch.allclose(decode(anchors, encode(anchors, boxes)), boxes, atol=1e-4)
    huge = decode(anchors, torch.tensor([[0.0, 0.0, 100.0, -100.0]] * 2))
    w, h = huge[:, 2] - huge[:, 0], huge[:, 3] - huge[:, 1]
    assert torch.allclose(w, torch.tensor(64 * 1000 / 16), rtol=1e-4)  # dw clamped at log(1000/16)
    assert torch.allclose(h, torch.tensor(64 * 16 / 1000), rtol=1e-4)
    clipped = decode(anchors, torch.zeros(2, 4), max_shape=(60, 120))
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 120 and clipped[:, 1::2].max() <= 60


def test_anchor_order_and_cache():
    model = tiny()
    sizes = [(3, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    anchors = model.anchor_generator.anchors(sizes, "cpu")
    assert anchors.shape == (12 + 4 + 3, 4)
    centres = (anchors[:12, :2] + anchors[:12, 2:]) / 2
    assert centres[:5].tolist() == [[0, 0], [8, 0], [16, 0], [24, 0], [0, 8]]  # x fastest, offset 0
    assert (anchors[:12, 2] - anchors[:12, 0]).eq(64).all() and (anchors[12:16, 2] - anchors[12:16, 0]).eq(128).all()
    assert model.anchor_generator.anchors(sizes, "cpu") is anchors


def _two_rectangles(h: int = 128, w: int = 128):
    image = torch.full((3, h, w), -0.5)
    image[:, 20:70, 15:60] = torch.tensor([1.5, -1.0, -1.0])[:, None, None]
    image[:, 60:110, 70:120] = torch.tensor([-1.0, -1.0, 1.5])[:, None, None]
    boxes = torch.tensor([[15.0, 20.0, 60.0, 70.0], [70.0, 60.0, 120.0, 110.0]])
    return image[None], boxes, torch.tensor([0, 1])


def test_tiny_preset_overfits_one_generated_image():
    """About 10 s on 2 CPU cores: 200 SGD steps on a 128x128 image with two rectangles."""
    images, boxes, labels = _two_rectangles()
    model = tiny(num_classes=2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    targets = [{"boxes": boxes, "labels": labels, "img_shape": (128, 128)}]
    first = None
    for _ in range(200):
        losses = model.loss(images, targets)
        loss = sum(losses.values())
        first = loss.item() if first is None else first
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    model.eval()
    det = model.predict(images, [(128, 128)], [(1.0, 1.0)])[0]
    top = det["scores"] > 0.3
    assert int(top.sum()) >= 2
    for box, label in zip(boxes, labels):
        ious = box_iou(box[None], det["boxes"][top])[0]
        best = int(ious.argmax())
        assert ious[best] > 0.8 and det["labels"][top][best] == label


def test_bad_targets_raise_atss_error():
    model = tiny()
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(AtssError, match="labels must be in 0..2"):
        model.loss(images, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([3]),
                             "img_shape": (64, 64)}])
    with pytest.raises(AtssError, match="2 boxes but 1 labels"):
        model.loss(images, [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([0]), "img_shape": (64, 64)}])
    with pytest.raises(AtssError, match="1 images but 2 targets"):
        model.loss(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                             "img_shape": (64, 64)}] * 2)


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from atss_cli.model.loss import centerness_target

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_atss_preset("tiny", 3).train()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(rank))
    if rank == 0:
        targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 60.0]]),
                    "labels": torch.tensor([0, 2]), "img_shape": (64, 64)}]
    else:  # no GT: this process has no positive but must still join every all-reduce
        targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "img_shape": (64, 64)}]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with torch.no_grad():
        together = model.loss(images, targets)
    dist.destroy_process_group()
    with torch.no_grad():
        alone = model.loss(images, targets)
        outputs = model(images)
        anchors, assigned, gt_boxes, _ = model.assign([tuple(o.shape[-2:]) for o in outputs[0]], targets, "cpu")
        pos = assigned[0] >= 0
        ctr_sum = centerness_target(anchors[pos], gt_boxes[0, assigned[0][pos]]).sum()
    torch.save({"together": together, "alone": alone, "num_pos": int(pos.sum()), "ctr_sum": float(ctr_sum)},
               f"{out_dir}/{rank}.pt")


def test_loss_normalisation_across_processes(tmp_path):
    """Two gloo processes: avg_factor and the centerness sum are averaged over processes
    (SPEC.md section 3), and a process without positives still joins the all-reduces."""
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    assert r[0]["num_pos"] > 0 and r[1]["num_pos"] == 0
    avg = (max(r[0]["num_pos"], 1) + max(r[1]["num_pos"], 1)) / 2
    ctr = max((r[0]["ctr_sum"] + r[1]["ctr_sum"]) / 2, 1.0)
    for rank in range(2):
        own = max(r[rank]["num_pos"], 1)
        for key in ("loss_cls", "loss_centerness"):
            expected = r[rank]["alone"][key] * own / avg
            assert torch.allclose(r[rank]["together"][key], expected, rtol=1e-5), (rank, key)
    expected_bbox = r[0]["alone"]["loss_bbox"] * max(r[0]["ctr_sum"], 1.0) / ctr
    assert torch.allclose(r[0]["together"]["loss_bbox"], expected_bbox, rtol=1e-5)
    assert r[1]["together"]["loss_bbox"] == 0
