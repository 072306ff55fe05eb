"""Training U²-Net: the loop (engine), and the entry point that runs it alone or under Horovod."""
