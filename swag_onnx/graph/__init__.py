"""ONNX in, ONNX out: add gradient outputs to a classifier with standard ONNX ops."""

from swag_onnx.graph.augment import (
    CONTRACT_KEY, SCORE, SEED, Contract, act_name, augment, augment_model, describe, grad_name,
)

__all__ = ["augment", "augment_model", "describe", "Contract", "SEED", "SCORE", "CONTRACT_KEY",
           "act_name", "grad_name"]
