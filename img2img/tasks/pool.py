"""The history pool of generated images that discriminators see (a tool of GAN tasks)."""
from __future__ import annotations

import torch


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): D sees old fakes half of the time.

    Its randomness comes from its own generator so that a resumed run draws the same choices.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.rng).item() > 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                old = self.images[i].clone()
                self.images[i] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [t.cpu() for t in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [t.to(device) for t in state["images"]]
        self.rng.set_state(state["rng"])
