"""Whisper encoder that returns the stack of hidden states LatentSync conditions on."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

# diffusers finds a pipeline component's loader by looking up base classes in the component's module namespace.
__all__ = ["PreTrainedModel", "WhisperAudioEncoder"]


class WhisperAudioEncoder(WhisperEncoder):
    """transformers' Whisper encoder, plus [`hidden_state_stack`] for LatentSync's audio features.

    The official features are the embedding output (after the convolutions and positional embedding) followed by
    the output of every encoder layer, without the final layer norm: ``encoder_layers + 1`` states of width
    ``d_model`` per 20 ms token.
    """

    @property
    def num_feature_states(self) -> int:
        return self.config.encoder_layers + 1

    @torch.no_grad()
    def hidden_state_stack(self, input_features: torch.Tensor) -> torch.Tensor:
        """Map log-mel windows ``(B, n_mels, 3000)`` to features ``(B, 1500, encoder_layers + 1, d_model)``."""
        x = nn.functional.gelu(self.conv1(input_features))
        x = nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)
        x = x + self.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in self.layers:
            x = layer(x, None)
            if isinstance(x, tuple):
                x = x[0]
            states.append(x)
        return torch.stack(states, dim=2)
