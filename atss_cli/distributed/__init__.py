"""The process group every multi-process run joins (training and evaluation alike), and the
heartbeat that tells a silent peer from a slow one. Starting the processes is atss_cli.launch.

    group.py       init_from_env, shutdown, all_reduce_mean/max, broadcast_object, barrier
    heartbeat.py   a counter per rank in the store and a judge thread
"""
