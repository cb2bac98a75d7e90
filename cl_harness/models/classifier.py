"""A Hugging Face encoder with the heads a continual-learning scenario needs, in Avalanche's tensor-in, logits-out form.

Inputs are packed token tensors ``(batch, 3, length)`` holding input ids, attention mask and
token type ids, so that Avalanche can move them with ``.to(device)`` and its plugins can call
``model(x)``. Each batch is trimmed to its longest sequence before the encoder runs.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
from avalanche.models import MultiTaskModule
from torch import Tensor, nn

from cl_harness.data.encoding import lengths
from cl_harness.models.chunking import padding_optimal_chunks
from cl_harness.models.fused_inference import fused_linears
from cl_harness.models.lora import routed

MASKED_LOGIT = -1.0e4  # finite, so that distillation losses on masked units stay finite


def trim_batch(x: Tensor) -> Tensor:
    """Cut the padding columns that every row of the batch shares. ``(batch, 3, length) -> (batch, 3, longest)``."""
    longest = int(lengths(x).max().item()) if x.shape[0] else 1
    return x[:, :, : max(longest, 1)]


class TextClassifier(MultiTaskModule):
    """Encoder + scenario heads.

    - ``class_incremental``: one head over every class of the stream; units of classes not yet
      trained on are masked, so the head grows as classes are seen.
    - ``domain_incremental``: one head over the shared label set, all units active.
    - ``task_incremental``: one head per task, chosen by the task label (known at test time).
    """

    def __init__(
        self, encoder: nn.Module, head_sizes: list[int], scenario: str, pooling: str = "mean", precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.encoder = encoder
        self.scenario = scenario
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, size) for size in head_sizes)
        self.width = max(head_sizes)
        self.register_buffer("seen_units", torch.zeros(head_sizes[0], dtype=torch.bool))
        self._takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters
        self.virtual_tokens = 0  # soft-prompt positions the encoder prepends (prompt tuning)
        self.route_by_task = False  # task-incremental: each example passes through its task's LoRA adapter only
        self.mlm_head: nn.Module | None = None  # set when the stream holds masked-LM tasks

    def adaptation(self, experience) -> None:
        """Activate the units of the classes in a training experience (class-incremental only)."""
        if self.training and self.scenario == "class_incremental":
            classes = torch.as_tensor(sorted(experience.dataset.targets.uniques), dtype=torch.long)
            self.seen_units[classes.to(self.seen_units.device)] = True

    def hidden_states(self, x: Tensor) -> Tensor:
        """Float32 token features of a packed batch. ``(batch, 3, length) -> (batch, length, hidden)``.

        With a half precision, the encoder runs under autocast; what follows (pooling, heads, losses) stays in float32.
        """
        ids, mask, types = x[:, 0], x[:, 1], x[:, 2]
        kwargs = {"token_type_ids": types} if self._takes_token_types else {}
        half = nullcontext() if self.autocast_dtype is None else torch.autocast(x.device.type, dtype=self.autocast_dtype)
        with half:
            hidden = self.encoder(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state  # (batch, virtual + length, hidden)
        return hidden[:, hidden.shape[1] - ids.shape[1] :].float()  # soft-prompt positions dropped

    def encode(self, x: Tensor, chunked: bool = True) -> Tensor:
        """Pooled sentence features. ``(batch, 3, length) -> (batch, hidden)``.

        Training batches on the CPU run as runs of length-sorted rows, each trimmed to its own longest
        text, split where the padding saved outweighs an extra encoder call
        (:func:`padding_optimal_chunks`). Rows do not interact in the encoder, so the features are the
        same, with less padding computed (a replay batch joins two random batches, and pads to the longer).
        """
        if chunked and self.training and x.device.type == "cpu" and x.shape[0] > 1:
            sizes = lengths(x)  # (batch,)
            order = torch.argsort(sizes, descending=True, stable=True)  # (batch,)
            runs = padding_optimal_chunks(sizes[order].tolist())
            if len(runs) > 1:
                features = torch.cat([self.encode(x[rows], chunked=False) for rows in torch.split(order, runs)])
                return features[torch.argsort(order)]  # back to the batch's row order
        x = trim_batch(x)
        mask = x[:, 1]
        hidden = self.hidden_states(x)  # (batch, length, hidden)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, length, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor:
        """Logits ``(batch, width)``; masked or absent units hold ``MASKED_LOGIT``."""
        if self.scenario != "task_incremental":
            logits = self.heads[0](self.encode(x))
            if self.scenario == "class_incremental":
                logits = logits.masked_fill(~self.seen_units, MASKED_LOGIT)
            return logits
        if task_labels is None:
            raise ValueError("a task-incremental model needs the task label of every example")
        if isinstance(task_labels, int):
            task_labels = torch.full((x.shape[0],), task_labels, device=x.device)
        if self.route_by_task:
            with routed(self.encoder, task_labels):  # routes by row: the batch stays whole
                features = self.encode(x, chunked=False)  # (batch, hidden)
        else:
            features = self.encode(x)  # (batch, hidden)
        logits = features.new_full((x.shape[0], self.width), MASKED_LOGIT)
        for task in torch.unique(task_labels).tolist():
            rows = task_labels == task
            head = self.heads[task]
            logits[rows, : head.out_features] = head(features[rows])
        return logits

    # -- the backbone-kind seam: what strategies ask of any model (models/generative.py has the LM side) -------------
    def criterion(self) -> nn.Module:
        """The training loss of a batch, ``(logits (batch, width), targets (batch,)) -> scalar``."""
        return nn.CrossEntropyLoss()

    def trained_units(self, task_labels) -> dict[int, Tensor]:
        """The output units trained so far, per head: what distillation keeps (class-incremental: the seen classes)."""
        if self.scenario == "task_incremental":
            return {int(task): torch.arange(self.heads[int(task)].out_features) for task in task_labels}
        if self.scenario == "class_incremental":
            return {0: self.seen_units.nonzero().flatten().cpu()}
        return {0: torch.arange(self.heads[0].out_features)}

    def distillation_view(self, x: Tensor, task_labels: Tensor, output: Tensor | None, units: dict[int, Tensor]) -> list[Tensor]:
        """The logits distillation compares, one ``(batch, head units)`` tensor per head of ``units``.

        One head: the step's ``output`` (computed here when None) on the units; task-incremental: every head of
        ``units`` on every example, from one encoder pass.
        """
        if self.scenario != "task_incremental":
            output = self(x, task_labels) if output is None else output  # (batch, width)
            return [output[:, units[0].to(output.device)]]
        features = self.encode(x)  # (batch, hidden): the step's forward ran only the current head
        return [self.heads[head](features) for head in units]

    def distillation_mask(self, stored: Tensor, x: Tensor) -> Tensor:
        """Which entries of stored logits ``(n, width)`` were real predictions: units active when they were recorded."""
        return stored > MASKED_LOGIT / 2

    def scoring(self):
        """Context for inference passes: the encoder's linear layers fused with their bias and GELU, in fp32 on a CPU
        (``models/fused_inference.py``); a no-op elsewhere. The model is given back unchanged."""
        return fused_linears(self.encoder) if self.autocast_dtype is None else nullcontext()

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.forward(x, task_label)

    def can_predict(self, targets: Tensor) -> bool:
        """Whether any of these target units can win the argmax: in class-incremental heads, only seen units can."""
        return self.scenario != "class_incremental" or bool(self.seen_units[targets.to(self.seen_units.device)].any())

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
