"""The KFP pipelines. `training.cutout_training_pipeline` is the one `cutout pipeline …` compiles and runs."""
