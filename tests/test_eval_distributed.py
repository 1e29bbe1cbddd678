"""Distributed inference with gloo: two ranks, disjoint shares plus sampler padding, one result.

Every rank returns the full, identical detection list, equal to one process over the whole
split, with each image exactly once although the padded sampler repeats one on rank 1.
"""

import json
import os

import torch.distributed as dist
import torch.multiprocessing as mp

from test_eval_coco import FakeDetector, fake_batches

from atss_cli.evaluation.gather import run_inference

IMAGE_IDS = [11, 12, 13, 14, 15]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # DistributedSampler-style split with padding: rank 0 gets 11, 13, 15; rank 1 gets 12, 14, 11.
        padded = IMAGE_IDS + IMAGE_IDS[: (-len(IMAGE_IDS)) % world]
        share = padded[rank::world]
        dets = run_inference(FakeDetector(), fake_batches(share, batch_size=2), "cpu", label_to_cat_id=[1, 3, 7])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(dets, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_every_image_once(tmp_path):
    from atss_cli.launch.torchrun import free_port

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    single = run_inference(FakeDetector(), fake_batches(IMAGE_IDS), "cpu", label_to_cat_id=[1, 3, 7])
    assert rank0 == rank1 == json.loads(json.dumps(single))
    assert sorted({d["image_id"] for d in rank0}) == IMAGE_IDS
    assert len(rank0) == 2 * len(IMAGE_IDS)
