"""The two graphs of LR inference, as plain nn.Modules that every engine shares.

`EncoderGraph`: patches (B, P, P, 3) uint8 (or float in 0..255) -> embeddings (B, D), with the
encoder's preprocessing folded in so an exported graph takes raw pixels.
`HeadGraph`: one bag (N, D) -> class probabilities (C,) and attention (N,), the logits divided
by the calibration temperature first (a buffer, so it is in the graph and in the weights hash).
`EnsembleEncoder` / `EnsembleHead`: the same two signatures for the mean of several students:
the encoder's output is the members' features side by side (a shared LR encoder runs once), the
head gives each member its slice and averages their probabilities and attention.
The torch engine runs these modules and the exporters trace them, so all engines compute the
same function.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

ENCODER_INPUT = "patches"
ENCODER_OUTPUT = "embeddings"
HEAD_INPUT = "features"
HEAD_OUTPUTS = ("probabilities", "attention")


class EncoderGraph(nn.Module):
    def __init__(self, preprocess: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(patches))


class HeadGraph(nn.Module):
    """Wraps a packed-bag MIL model (`forward(x, offsets)`) for a single bag."""

    def __init__(self, mil: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.mil = mil
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # offsets = [0, N] built from the (symbolic) bag size so the exported graph stays dynamic.
        offsets = torch.arange(2, device=features.device, dtype=torch.int64) * features.shape[0]
        out = self.mil(features, offsets)
        return torch.softmax(out.logits[0].float() / self.temperature, dim=-1), out.attn


class EnsembleEncoder(nn.Module):
    """preprocess -> `shared` (once) -> every branch -> the branches' features side by side."""

    def __init__(self, preprocess: nn.Module, shared: nn.Module, branches: list[nn.Module]
                 ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.shared = shared
        self.branches = nn.ModuleList(branches)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.shared(self.preprocess(patches))
        return torch.cat([branch(h) for branch in self.branches], dim=1)


class EnsembleHead(nn.Module):
    """The mean of the members' calibrated probabilities and of their attention; member i
    reads columns `slices[i]` of the features."""

    def __init__(self, mils: list[nn.Module], slices: list[tuple[int, int]],
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.heads = nn.ModuleList(HeadGraph(m, temperature) for m in mils)
        self.slices = [tuple(s) for s in slices]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [head(features[:, a:b]) for head, (a, b) in zip(self.heads, self.slices,
                                                                strict=True)]
        probs = torch.stack([p for p, _ in outs]).mean(dim=0)
        return probs, torch.stack([a for _, a in outs]).mean(dim=0)


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the parameters and buffers (names, dtypes, shapes, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
