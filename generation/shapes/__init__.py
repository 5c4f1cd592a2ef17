"""The shipped default model: its procedurally drawn data set, tiny architecture, training, attribute classifier
and evaluation (`make train`, `make evaluate`; docs/model.md)."""
