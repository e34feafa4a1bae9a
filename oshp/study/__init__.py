"""The paper's experiment matrix: which runs exist and which each notebook needs, training them, executing the
notebooks."""
