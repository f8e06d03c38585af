"""Which parameters learn: the trainable-layer policies of chapter 6.

Every policy starts from a fully frozen model whose `out_head` was replaced by a fresh classifier
layer (always trainable). `last_block`, the book's default, also trains the last transformer block
and `final_norm`.
"""

from __future__ import annotations

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model import GPTModel

POLICY_BLOCKS = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}
POLICIES = (*POLICY_BLOCKS, "last_n_blocks", "all")


def apply_policy(model: GPTModel, policy: str, last_n_blocks: int | None = None) -> None:
    """Freeze `model`, then unfreeze what `policy` trains (`last_n_blocks` needs `last_n_blocks=k`)."""
    n_layers = len(model.trf_blocks)
    if policy == "all":
        model.requires_grad_(True)
        return
    if policy in POLICY_BLOCKS:
        k = POLICY_BLOCKS[policy]
    elif policy == "last_n_blocks":
        if last_n_blocks is None or not 0 <= last_n_blocks <= n_layers:
            raise GPTClassifierError(
                f"finetune.last_n_blocks={last_n_blocks} must be between 0 and the model's {n_layers} blocks"
            )
        k = last_n_blocks
    else:
        raise GPTClassifierError(f"finetune.policy={policy!r} is unknown: use one of {', '.join(POLICIES)}")
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if k > 0:
        model.final_norm.requires_grad_(True)
        model.trf_blocks[n_layers - k :].requires_grad_(True)


def first_trainable_block(model: GPTModel) -> int:
    """Index of the lowest block with a trainable parameter; 0 if the embeddings learn too.

    Everything below it is the frozen trunk whose output can be cached.
    """
    if any(p.requires_grad for m in (model.tok_emb, model.pos_emb) for p in m.parameters()):
        return 0
    for index, block in enumerate(model.trf_blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return len(model.trf_blocks)


def count_parameters(model: GPTModel) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once (`parameters()` dedups)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
