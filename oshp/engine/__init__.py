"""What a run is: its configuration and profiles, the run-folder contract, evaluation, one training step, training,
synthetic pretraining, and parsing new images with a trained run."""
