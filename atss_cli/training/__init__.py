"""The 1x recipe: the training loop and what it is made of.

    train.py       train(cfg, reporter): the loop of named steps
    run.py         TrainRun, Position: the run's shared state
    setup.py       building a run in the order the RNG needs (prepare_run)
    state.py       what a checkpoint saves and a resume restores
    step.py        one iteration: micro-batches, accumulation normalisers, the optimizer step
    schedule.py    learning rate and the batch plan
    checkpoint.py  training checkpoint files (atomic)
    run_log.py     metrics.jsonl, TensorBoard, curves.png
    pretrained.py  the ImageNet backbone file
    preemption.py  SIGUSR1/SIGTERM -> a stop flag; SLURM requeue
"""
