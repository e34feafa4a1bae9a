"""The synthetic data generator: drawing primitives, clothing, scenes, people, the dataset writer, and the
part-based creatures and pasted pseudo classes of synthetic pretraining."""
