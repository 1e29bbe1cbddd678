"""COCO box AP: inference over a split, the distributed gather, the ground truth COCOeval reads,
and the COCOeval adapter.

    cocoeval.py       coco_evaluate(ann, detections, evaluator=...): the 12 numbers, per class
    ground_truth.py   eval_ground_truth(cache): the JSON as COCOeval should read it
    gather.py         infer_packed / gather_packed / packed_to_detections: this rank's share,
                      all ranks' shares, COCO result records
    evaluate.py       evaluate(model, cache, ...), evaluate_checkpoint(...),
                      evaluate_detections_file(...): what `atss eval` and training call
"""
