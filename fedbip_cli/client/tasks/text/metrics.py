"""Held-out metrics of the loaded adapter: accuracy, macro-F1 and mean cross-entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedbip_cli.client.metrics import classification_metrics
from fedbip_cli.client.tasks.text.batching import Encoded, eval_batches
from fedbip_cli.client.tasks.text.model import logits_of

if TYPE_CHECKING:  # the session imports the tasks
    from fedbip_cli.client.session import ClientModel


@torch.inference_mode()
def predict_logits(cm: ClientModel, data: Encoded, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Logits of the loaded adapter for every example, in the data's order (no gradients, on the model's
    device, autocast in its dtype on a GPU)."""
    cm.model.eval()
    out = torch.empty((len(data), cm.num_labels))
    for idx, batch in eval_batches(data, batch_size, pad_id):
        batch = cm.to_device(batch)
        with cm.autocast():
            output = cm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out[idx] = logits_of(output).float().cpu()
    return out


def evaluate(cm: ClientModel, data: Encoded, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy of the adapter currently loaded in `cm` on `data`."""
    return classification_metrics(predict_logits(cm, data, pad_id, batch_size), data.labels, cm.num_labels)
