"""pix2pixHD as its authors wrote it (NVIDIA/pix2pixHD models/networks.py and pix2pixHD_model.py),
transcribed by hand for the tests: the networks, GANLoss on lists, feature matching, VGGLoss."""
from __future__ import annotations

import torch
from torch import nn


class ResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0),
                                        nn.InstanceNorm2d(dim, affine=False), nn.ReLU(True),
                                        nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0),
                                        nn.InstanceNorm2d(dim, affine=False))

    def forward(self, x):
        return x + self.conv_block(x)


class GlobalGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_downsampling, n_blocks):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=False)  # noqa: E731
        activation = nn.ReLU(True)
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0), norm(ngf), activation]
        for i in range(n_downsampling):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1), norm(ngf * mult * 2),
                      activation]
        mult = 2**n_downsampling
        for i in range(n_blocks):
            model += [ResnetBlock(ngf * mult)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                         output_padding=1), norm(int(ngf * mult / 2)), activation]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        return self.model(input)


class LocalEnhancer(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, n_local_enhancers, n_blocks_local):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=False)  # noqa: E731
        self.n_local_enhancers = n_local_enhancers
        ngf_global = ngf * (2**n_local_enhancers)
        model_global = GlobalGenerator(input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global).model
        model_global = [model_global[i] for i in range(len(model_global) - 3)]
        self.model = nn.Sequential(*model_global)
        for n in range(1, n_local_enhancers + 1):
            ngf_global = ngf * (2 ** (n_local_enhancers - n))
            model_downsample = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf_global, kernel_size=7, padding=0),
                                norm(ngf_global), nn.ReLU(True),
                                nn.Conv2d(ngf_global, ngf_global * 2, kernel_size=3, stride=2, padding=1),
                                norm(ngf_global * 2), nn.ReLU(True)]
            model_upsample = [ResnetBlock(ngf_global * 2) for _ in range(n_blocks_local)]
            model_upsample += [nn.ConvTranspose2d(ngf_global * 2, ngf_global, kernel_size=3, stride=2, padding=1,
                                                  output_padding=1), norm(ngf_global), nn.ReLU(True)]
            if n == n_local_enhancers:
                model_upsample += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
            setattr(self, "model" + str(n) + "_1", nn.Sequential(*model_downsample))
            setattr(self, "model" + str(n) + "_2", nn.Sequential(*model_upsample))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def ordered_parameters(self):
        """In the order our LocalEnhancer holds them: G1, then every enhancer's down, then every up."""
        n = range(1, self.n_local_enhancers + 1)
        return [*self.model.parameters(), *(p for i in n for p in getattr(self, f"model{i}_1").parameters()),
                *(p for i in n for p in getattr(self, f"model{i}_2").parameters())]

    def forward(self, input):
        input_downsampled = [input]
        for i in range(self.n_local_enhancers):
            input_downsampled.append(self.downsample(input_downsampled[-1]))
        output_prev = self.model(input_downsampled[-1])
        for n_local_enhancers in range(1, self.n_local_enhancers + 1):
            model_downsample = getattr(self, "model" + str(n_local_enhancers) + "_1")
            model_upsample = getattr(self, "model" + str(n_local_enhancers) + "_2")
            input_i = input_downsampled[self.n_local_enhancers - n_local_enhancers]
            output_prev = model_upsample(model_downsample(input_i) + output_prev)
        return output_prev


class NLayerDiscriminator(nn.Module):
    """getIntermFeat=True: the output of every sub-model."""

    def __init__(self, input_nc, ndf, n_layers):
        super().__init__()
        kw, padw = 4, 2
        norm = lambda c: nn.InstanceNorm2d(c, affine=False)  # noqa: E731
        sequence = [[nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            sequence += [[nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=2, padding=padw), norm(nf), nn.LeakyReLU(0.2, True)]]
        nf_prev, nf = nf, min(nf * 2, 512)
        sequence += [[nn.Conv2d(nf_prev, nf, kernel_size=kw, stride=1, padding=padw), norm(nf), nn.LeakyReLU(0.2, True)]]
        sequence += [[nn.Conv2d(nf, 1, kernel_size=kw, stride=1, padding=padw)]]
        self.n_layers = n_layers
        for n in range(len(sequence)):
            setattr(self, "model" + str(n), nn.Sequential(*sequence[n]))

    def forward(self, input):
        res = [input]
        for n in range(self.n_layers + 2):
            res.append(getattr(self, "model" + str(n))(res[-1]))
        return res[1:]


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf, n_layers, num_D):
        super().__init__()
        self.num_D = num_D
        self.nets = nn.ModuleList(NLayerDiscriminator(input_nc, ndf, n_layers) for _ in range(num_D))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def forward(self, input):
        result, input_downsampled = [], input
        for i in range(self.num_D):
            result.append(self.nets[i](input_downsampled))  # pix2pixHD's scale num_D-1-i
            if i != self.num_D - 1:
                input_downsampled = self.downsample(input_downsampled)
        return result


def gan_loss(input, target_is_real):
    """GANLoss(use_lsgan=True) on a list of per-scale lists: summed over scales."""
    loss = 0
    for input_i in input:
        pred = input_i[-1]
        target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
        loss += nn.MSELoss()(pred, target)
    return loss


class Vgg19(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.slices = nn.ModuleList(nn.Sequential(*[features[x] for x in range(a, b)])
                                    for a, b in ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)))
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, X):
        out = []
        for s in self.slices:
            X = s(X)
            out.append(X)
        return out


class VGGLoss(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.vgg = Vgg19(features)
        self.criterion = nn.L1Loss()
        self.weights = [1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0]

    def forward(self, x, y):
        x_vgg, y_vgg = self.vgg(x), self.vgg(y)
        loss = 0
        for i in range(len(x_vgg)):
            loss += self.weights[i] * self.criterion(x_vgg[i], y_vgg[i].detach())
        return loss


def feature_matching(pred_fake, pred_real, n_layers_D, num_D, lambda_feat):
    loss = 0
    feat_weights = 4.0 / (n_layers_D + 1)
    D_weights = 1.0 / num_D
    for i in range(num_D):
        for j in range(len(pred_fake[i]) - 1):
            loss += D_weights * feat_weights * nn.L1Loss()(pred_fake[i][j], pred_real[i][j].detach()) * lambda_feat
    return loss
