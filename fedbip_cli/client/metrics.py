"""Classification metrics shared by every classifying task (accuracy, macro-F1, mean cross-entropy), and
the predictions `fedbip predict` writes from class logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in the truth or the predictions."""
    scores = []
    for c in range(num_labels):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def classification_metrics(logits: torch.Tensor, labels: list[int], num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy of class logits (every classification task type)."""
    gold = torch.tensor(labels)
    y_pred, y_true = logits.argmax(-1).numpy(), gold.numpy()
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "macro_f1": macro_f1(y_true, y_pred, num_labels),
        "loss": float(F.cross_entropy(logits, gold).item()),
        "examples": int(len(labels)),
    }


def classification_rows(logits: torch.Tensor, labels: list[str]) -> list[dict[str, Any]]:
    """`fedbip predict`'s result per row: the most probable label and every label's probability (softmax)."""
    probs = logits.softmax(-1)
    return [{"label": labels[int(p.argmax())],
             "probabilities": {name: round(float(v), 6) for name, v in zip(labels, p)}} for p in probs]
