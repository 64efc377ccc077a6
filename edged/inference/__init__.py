"""On-device inference for WASI-NN: TFLite models loaded once, interpreters pooled per model."""
