"""Starting the processes of a run: one in this process, N under torchrun, or this srun task.

    training.py    run_training(cfg, ...): what `atss train` calls
    evaluation.py  run_evaluation(request, ...): what `atss eval` calls
    torchrun.py    launch(): torchrun's agent in this process, with one-line failure summaries
    slurm.py       where an srun task stands; the sbatch template
    worker.py      the entry point of every launched process (`python -m atss_cli.launch.worker`)
"""
