"""pytorch/examples super_resolution (model.py + main.py), renamed imports only: sub-pixel CNN
with PixelShuffle, init.orthogonal_ with calculate_gain, MSELoss, PSNR.

Replaced: the BSDS300 download + PIL transforms -> sklearn digits as the high-resolution images
(8x8 upsampled to 24x24), their 3x box-downsampled 8x8 versions as inputs, as numpy.
"""
import argparse
from math import log10

import numpy as np
import torch
import torch.nn as nn
import torch.nn.init as init
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset
from runtime.data.datasets import Digits   # sklearn's digits, read without importing sklearn


class Net(nn.Module):
    def __init__(self, upscale_factor):
        super(Net, self).__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
        self.conv2 = nn.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
        self.conv3 = nn.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
        self.conv4 = nn.Conv2d(32, upscale_factor ** 2, (3, 3), (1, 1), (1, 1))
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)
        self._initialize_weights()

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.pixel_shuffle(self.conv4(x))
        return x

    def _initialize_weights(self):
        init.orthogonal_(self.conv1.weight, init.calculate_gain('relu'))
        init.orthogonal_(self.conv2.weight, init.calculate_gain('relu'))
        init.orthogonal_(self.conv3.weight, init.calculate_gain('relu'))
        init.orthogonal_(self.conv4.weight)


parser = argparse.ArgumentParser(description='PyTorch Super Res Example')
parser.add_argument('--upscale_factor', type=int, default=3)
parser.add_argument('--batchSize', type=int, default=32)
parser.add_argument('--testBatchSize', type=int, default=64)
parser.add_argument('--nEpochs', type=int, default=2)
parser.add_argument('--lr', type=float, default=0.001)
parser.add_argument('--seed', type=int, default=123)
opt = parser.parse_args()
torch.manual_seed(opt.seed)
device = torch.device("cpu")

images = Digits().data.astype(np.float32) / 16.0
high = images.repeat(3, axis=1).repeat(3, axis=2)[:, None]            # (N, 1, 24, 24)
low = high.reshape(-1, 1, 8, 3, 8, 3).mean(axis=(3, 5))                  # (N, 1, 8, 8)
train_set = TensorDataset(torch.from_numpy(low[:96]), torch.from_numpy(high[:96]))
test_set = TensorDataset(torch.from_numpy(low[-32:]), torch.from_numpy(high[-32:]))
training_data_loader = DataLoader(dataset=train_set, batch_size=opt.batchSize, shuffle=True)
testing_data_loader = DataLoader(dataset=test_set, batch_size=opt.testBatchSize, shuffle=False)

model = Net(upscale_factor=opt.upscale_factor).to(device)
criterion = nn.MSELoss()
optimizer = optim.Adam(model.parameters(), lr=opt.lr)


def train(epoch):
    epoch_loss = 0
    for iteration, batch in enumerate(training_data_loader, 1):
        input, target = batch[0].to(device), batch[1].to(device)
        optimizer.zero_grad()
        loss = criterion(model(input), target)
        epoch_loss += loss.item()
        loss.backward()
        optimizer.step()
    print("===> Epoch {} Complete: Avg. Loss: {:.4f}".format(epoch, epoch_loss / len(training_data_loader)))


def test():
    avg_psnr = 0
    with torch.no_grad():
        for batch in testing_data_loader:
            input, target = batch[0].to(device), batch[1].to(device)
            prediction = model(input)
            mse = criterion(prediction, target)
            psnr = 10 * log10(1 / mse.item())
            avg_psnr += psnr
    print("===> Avg. PSNR: {:.4f} dB".format(avg_psnr / len(testing_data_loader)))
    return avg_psnr / len(testing_data_loader)


first = test()
for epoch in range(1, opt.nEpochs + 1):
    train(epoch)
    last = test()
assert last > first, (first, last)          # PSNR rises as the model learns
print(f"TRAINED {first:.4f} -> {last:.4f} (PSNR dB)")
