"""The GPT's layer list as a DeepSpeed PipelineModule (1F1B), and the names its parameters get.

The pipeline holds the very classes of gpt/model/gpt.py, in the same order, with the same per-layer
init seeds, so a pipelined model starts from the weights of the one-process model. DeepSpeed builds
only this stage's layers (each slot draws only this tensor rank's tiles, see gpt/model/slots.py). With tied
embeddings the first and last stages each hold the Embedding (DeepSpeed all-reduces its gradient
between them); the first stage's copy is the owner for checkpoints and the gradient norm.
"""

import re

import torch

from gpt.config.training import ModelConfig
from gpt.model.build import ModelShape
from gpt.model.gpt import Block, Embedding, Norm, Output
from gpt.model.slots import LayerInit, Slots, VocabHead


class LastOutput(Output):
    """The last stage's head: hands (hidden states, head weight) to the loss, which fuses the two."""

    def forward(self, x):
        return x, self.head.weight


def _tied_head(embedding: Embedding, x):
    """forward_fn of the last stage's copy of the tied embedding: its table is the head's weight."""
    return x, embedding.wte.weight


def _fused_loss(head: VocabHead):
    """loss_fn of the pipeline: the head and the cross entropy in one (gpt/model/loss.py); `head` holds no weight."""

    def loss(outputs, labels_and_weights):
        (x, weight), (labels, weights) = outputs, labels_and_weights
        return head(x, weight, labels, weights)

    return loss


def layer_specs(cfg: ModelConfig, shape: ModelShape, slots: Slots, seed: int) -> list:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    n = cfg.n_layer

    def init(i):
        return LayerInit(seed, i, cfg.init_std, n)

    def emb_args():  # each copy of a tied embedding names its tensors afresh (same seeds, same weights)
        return (cfg, slots, init(0), shape.padded_vocab)

    specs = [TiedLayerSpec("embed", Embedding, *emb_args(), tied_weight_attr="wte.weight") if cfg.tie_embeddings
             else LayerSpec(Embedding, *emb_args())]
    specs += [LayerSpec(Block, cfg, slots, init(1 + i), shape.ffn_hidden) for i in range(n)]
    specs.append(LayerSpec(Norm, cfg, slots))
    if cfg.tie_embeddings:
        specs.append(TiedLayerSpec("embed", Embedding, *emb_args(), forward_fn=_tied_head, tied_weight_attr="wte.weight"))
    else:
        specs.append(LayerSpec(LastOutput, cfg, slots, init(n + 2), shape.padded_vocab, shape.vocab_size))
    return specs


def blocks_per_stage(cfg: ModelConfig, stages: int, pipeline_layers) -> list[int]:
    """Transformer blocks of each stage: as configured, else even with the first stages taking the rest."""
    if pipeline_layers:
        return list(pipeline_layers)
    return [cfg.n_layer // stages + (1 if s < cfg.n_layer % stages else 0) for s in range(stages)]


def stage_boundaries(cfg: ModelConfig, stages: int, pipeline_layers) -> list[int]:
    """Layer-list indices where each stage starts (plus the end): blocks split evenly or as configured.

    The embedding rides with the first stage, the norm and output with the last.
    """
    counts = blocks_per_stage(cfg, stages, pipeline_layers)
    parts, block = [0], 1
    for c in counts[:-1]:
        block += c
        parts.append(block)
    parts.append(cfg.n_layer + 3)
    return parts


def build_pipeline(cfg: ModelConfig, shape: ModelShape, slots: Slots, *, seed: int, layout, pipeline_layers,
                   activation_checkpointing: bool):
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    class GPTPipeline(PipelineModule):
        def _partition_layers(self, method):  # our split, not DeepSpeed's heuristics
            self.parts = stage_boundaries(cfg, layout.pipeline, pipeline_layers)
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

        def _synchronize_tied_weights(self):
            # DeepSpeed broadcasts the tied embedding in place with autograd on, which leaves a
            # non-differentiable c10d node behind and makes torch warn about "silently incorrect"
            # gradients at every backward. The copies are already equal (same seeded init); the
            # broadcast is kept as a guard but done outside autograd.
            with torch.no_grad():
                super()._synchronize_tied_weights()

    topology = PipeModelDataParallelTopology(num_pp=layout.pipeline, num_mp=layout.tensor, num_dp=layout.data_context)
    loss_head = slots.vocab_head(cfg.n_embd, shape.padded_vocab, vocab_size=shape.vocab_size, init=None, tied=True)
    module = GPTPipeline(layers=layer_specs(cfg, shape, slots, seed), topology=topology,
                         loss_fn=_fused_loss(loss_head), checkpointable_layers=["Block"],
                         activation_checkpoint_func=slots.recompute)
    # Recompute each Block in backward (with both random streams replayed, as in the one-module
    # model: slots.recompute; the embedding, norm and head are kept). Set through the public
    # setter, which also precomputes which layers qualify: without
    # it the module's own forward skips every layer until a PipelineEngine has wrapped it.
    module.set_checkpoint_interval(1 if activation_checkpointing else 0)
    return module


_INDEXED = re.compile(r"^(\d+)\.(.*)$")


def canonical_name(pipe_name: str, n_layer: int) -> str:
    """PipelineModule parameter name -> the name the same parameter has in the one-process GPT."""
    if pipe_name.startswith("tied_modules.embed."):
        return "embedding." + pipe_name[len("tied_modules.embed."):]
    m = _INDEXED.match(pipe_name)
    if not m:
        raise ValueError(f"unexpected pipeline parameter name {pipe_name}")
    i, rest = int(m.group(1)), m.group(2)
    if i == 0:
        return f"embedding.{rest}"
    if i <= n_layer:
        return f"blocks.{i - 1}.{rest}"
    return f"{'norm' if i == n_layer + 1 else 'output'}.{rest}"
