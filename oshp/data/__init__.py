"""What an episode is: vocabularies and folds, the release layout, pairs, episodes, checks, real and synthetic data."""
