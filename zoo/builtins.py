"""The built-in architectures, sized from the catalog's shape function.

Built-ins take their kwargs, defaults and layer widths from jobs/catalog.py: the API reads
the same torch-free shape function (`catalog.weight_shapes`) to check blocks and prefixes at
submit time, and the modules here are sized from it, so the shapes have one owner.
- mlp: Linear + ReLU layers of the given hidden sizes on the flattened input.
- cnn: Conv2d + ReLU layers (max-pooled between), global average pool, linear head.
- resnet: the CIFAR ResNet of He et al., "Deep Residual Learning" (CVPR 2016), section 4.2:
  three stages of width w, 2w, 4w with n basic blocks each (depth 6n + 2), projection
  shortcuts (1x1 conv) where the shape changes.
- vit: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021): a linear projection of
  flattened patches, a class token, learned position embeddings, pre-norm encoder blocks with
  nn.MultiheadAttention (its projections are maskable) and a linear head.
Sequences (C, L) and vectors (D,) are images of height 1 for cnn, resnet and vit, whose
kernels and patches are then 1 x k.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spartan_service.jobs import catalog

Shape = tuple[int, ...]


def _linear(shape: Shape) -> nn.Linear:
    return nn.Linear(shape[1], shape[0])


class MLP(nn.Module):
    def __init__(self, input_shape: Shape, num_classes: int, hidden: list[int]) -> None:
        super().__init__()
        *layers, head = catalog.weight_shapes(
            "mlp", {"hidden": hidden}, input_shape, num_classes).values()
        self.layers = nn.ModuleList(_linear(shape) for shape in layers)
        self.head = _linear(head)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


class CNN(nn.Module):
    def __init__(self, input_shape: Shape, num_classes: int, channels: list[int],
                 kernel: int) -> None:
        super().__init__()
        self.image = catalog.as_image(input_shape)
        _, h, w = self.image
        shapes = catalog.weight_shapes("cnn", {"channels": channels, "kernel": kernel},
                                       input_shape, num_classes)
        self.convs = nn.ModuleList()
        self.pools = nn.ModuleList()
        for i in range(len(channels)):
            out, c, kh, kw = shapes[f"convs.{i}.weight"]
            self.convs.append(nn.Conv2d(c, out, (kh, kw), padding=(kh // 2, kw // 2)))
            # Halve the spatial size while it stays at least 2 (tiny inputs like digits' 8x8).
            pool = (2 if h >= 4 else 1, 2 if w >= 4 else 1)
            self.pools.append(nn.MaxPool2d(pool) if pool != (1, 1) else nn.Identity())
            h, w = h // pool[0], w // pool[1]
        self.head = _linear(shapes["head.weight"])

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.image)
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            x = torch.relu(conv(x))
            if i < len(self.convs) - 1:
                x = pool(x)
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int], kh: int,
                 project: bool) -> None:
        super().__init__()
        pad = (kh // 2, 1)
        self.conv1 = nn.Conv2d(c_in, c_out, (kh, 3), stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, (kh, 3), 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if project:  # the shape changes: a 1x1 projection on the shortcut
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, input_shape: Shape, num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        self.image = catalog.as_image(input_shape)
        h = self.image[1]
        shapes = catalog.weight_shapes("resnet", {"width": width, "depth": depth},
                                       input_shape, num_classes)
        stem_out, c, kh, _ = shapes["stem.weight"]
        self.stem = nn.Conv2d(c, stem_out, (kh, 3), 1, (kh // 2, 1), bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_out)
        stages = []
        for s in range(3):
            blocks = []
            for b in range((depth - 2) // 6):
                name = f"stages.{s}.{b}"
                out, c_in = shapes[f"{name}.conv1.weight"][:2]
                down = s > 0 and b == 0
                stride = ((1 if h == 1 else 2) if down else 1, 2 if down else 1)
                blocks.append(BasicBlock(c_in, out, stride, kh,
                                         project=f"{name}.shortcut.0.weight" in shapes))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = _linear(shapes["head.weight"])

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.image)
        x = self.stages(torch.relu(self.stem_bn(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:  # widths: see ViT
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, input_shape: Shape, num_classes: int, dim: int, depth: int, heads: int,
                 mlp_ratio: int, patch: int | None) -> None:
        super().__init__()
        self.image = catalog.as_image(input_shape)
        _, h, w = self.image
        self.patch = catalog.vit_patch((h, w), patch)
        ph, pw = self.patch
        tokens = (h // ph) * (w // pw)
        shapes = catalog.weight_shapes(
            "vit", {"dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio,
                    "patch": patch}, input_shape, num_classes)
        self.patch_embed = _linear(shapes["patch_embed.weight"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, shapes[f"blocks.{i}.mlp.0.weight"][0]) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = _linear(shapes["head.weight"])

    def forward(self, x: Tensor) -> Tensor:
        n, (c, h, w), (ph, pw) = x.shape[0], self.image, self.patch
        # (N, C, H, W) -> (N, tokens, C * ph * pw)
        x = x.reshape(n, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
        x = self.patch_embed(x.reshape(n, (h // ph) * (w // pw), c * ph * pw))
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


BUILTINS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "vit": ViT}
