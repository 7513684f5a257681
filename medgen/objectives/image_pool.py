"""The CycleGAN image pool (history buffer) with a resumable random state.

Discriminators are updated with a mix of the newest fakes and fakes from earlier generator
versions, which damps oscillation (Shrivastava et al. 2017; CycleGAN uses a pool of 50). The
pool's contents and its RNG are part of its ``state_dict`` so a resumed run continues exactly.

Examples:
    >>> import torch
    >>> pool = ImagePool(2, seed=0)
    >>> out = pool.query(torch.ones(3, 1, 4, 4))
    >>> out.shape, len(pool)
    (torch.Size([3, 1, 4, 4]), 2)
    >>> ImagePool(0).query(torch.zeros(1, 1, 2, 2)).sum().item()  # size 0: pass-through
    0.0
"""

from __future__ import annotations

import torch

__all__ = ["ImagePool"]


class ImagePool:
    """Keep up to ``size`` past fakes; return half new, half (on average) remembered ones.

    Args:
        size: capacity; 0 disables the pool (query returns its input).
        seed: seed of the pool's own generator (independent of the global RNG).
    """

    def __init__(self, size: int = 50, *, seed: int = 0):
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """A batch for the discriminator: each item is either the new fake or a remembered one.

        While the pool is filling, new fakes are stored and returned; after that, with probability
        0.5 a new fake replaces a random remembered one, which is returned in its place.
        """
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand((), generator=self.generator).item() < 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.generator).item())
                old = self.images[idx].to(image.device)
                self.images[idx] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        stacked = torch.cat([i.cpu() for i in self.images], 0) if self.images else torch.zeros(0)
        return {"size": self.size, "images": stacked, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = [images[i:i + 1].clone() for i in range(images.shape[0])] if images.numel() else []
        self.generator.set_state(state["rng"])
