"""``NormedConv2d``: a convolution between the cosine-normalised input and weights, times a temperature.

The mask predictor of the normalised mask head (:mod:`.mask_heads`), as used by ECM's and Seesaw's
"normed mask" LVIS recipes. Definition (docs/methods.md#normalised-mask-head), with ``p`` the power,
``eps`` 1e-6 and ``tau`` the temperature, at every pixel of the input:

    x_hat = tau * x / (||x||^p + eps)            (norm over the input channels)
    W_hat_k = W_k / (||W_k||^p + eps)            (norm over the input channels of each kernel tap;
                                                  over the whole kernel with ``norm_over_kernel``)
    y = conv(x_hat, W_hat) + b                   (the bias is neither normalised nor scaled)

For the 1x1 predictor both weight norms agree. It is deliberately not an ``nn.Conv2d`` subclass, so
code that takes the fast path for a plain 1x1 convolution (slicing ``weight`` by class) does not take
it here; it calls :meth:`NormedConv2d.forward_classes` instead. The parameters keep ``nn.Conv2d``'s
names and shapes (``weight`` (Cout, Cin, k, k), ``bias`` (Cout,)).
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormedConv2d"]


class NormedConv2d(nn.Module):
    """Cosine-normalised convolution (stride 1, no padding; the mask head's 1x1 predictor).

    Args:
        in_channels, out_channels, kernel_size: as ``nn.Conv2d``.
        bias: add a learned bias per output channel (initialised to 0).
        temperature: ``tau``, the scale of the normalised input (20 in the authors' recipes).
        power: ``p``, the power of both norms (1: cosine similarity times ``tau``).
        eps: added to both norms.
        norm_over_kernel: normalise each output channel's weights over the whole kernel
            (Cin x k x k) instead of over the input channels of each tap.

    The weights are initialised as the mask logits of mmdetection's FCN mask head (Kaiming normal,
    fan-out, ReLU gain).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        bias: bool = True,
        temperature: float = 20.0,
        power: float = 1.0,
        eps: float = 1e-6,
        norm_over_kernel: bool = False,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError("NormedConv2d temperature must be > 0, got %r" % (temperature,))
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.temperature = float(temperature)
        self.power = float(power)
        self.eps = float(eps)
        self.norm_over_kernel = bool(norm_over_kernel)
        k = self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, k, k))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return "%d, %d, kernel_size=%d, bias=%s, temperature=%g, power=%g, eps=%g%s" % (
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.bias is not None,
            self.temperature,
            self.power,
            self.eps,
            ", norm_over_kernel=True" if self.norm_over_kernel else "",
        )

    def normalized_weight(self) -> torch.Tensor:
        """``W_hat`` (Cout, Cin, k, k)."""
        w = self.weight
        if self.norm_over_kernel:
            norm = w.flatten(1).norm(dim=1)[:, None, None, None]
        else:
            norm = w.norm(dim=1, keepdim=True)
        return w / (norm.pow(self.power) + self.eps)

    def normalized_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat`` (N, Cin, H, W): ``tau * x / (||x||^p + eps)``, the norm over channels per pixel."""
        return x * self.temperature / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, Cin, H, W) -> (N, Cout, H - k + 1, W - k + 1)``."""
        return F.conv2d(self.normalized_input(x), self.normalized_weight(), self.bias)

    def forward_classes(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Only the channel ``classes[i]`` of each ``x[i]``: ``(N, Cin, H, W), (N,) -> (N, 1, H', W')``,
        equal to ``self.forward(x)[arange(N), classes][:, None]`` without computing the other channels."""
        classes = classes.long()
        if classes.shape != (x.shape[0],):
            raise ValueError(
                "forward_classes: classes must have shape (N,) = (%d,), got %s"
                % (x.shape[0], tuple(classes.shape))
            )
        if self.kernel_size != 1:
            out = self.forward(x)
            return out[torch.arange(x.shape[0], device=x.device), classes][:, None]
        w = self.weight[classes]  # (N, Cin, 1, 1): only the selected rows are normalised
        if self.norm_over_kernel:
            norm = w.flatten(1).norm(dim=1)[:, None, None, None]
        else:
            norm = w.norm(dim=1, keepdim=True)
        w_hat = (w / (norm.pow(self.power) + self.eps)).flatten(1)  # (N, Cin)
        out = torch.einsum("nchw,nc->nhw", self.normalized_input(x), w_hat)[:, None]
        if self.bias is not None:
            out = out + self.bias[classes][:, None, None, None]
        return out
