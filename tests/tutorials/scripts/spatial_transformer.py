"""intermediate_source/spatial_transformer_tutorial.py, renamed imports only: a localization
network regressing a 2x3 affine theta (its last layer zeroed and its bias set to the identity
with ``.data.zero_()`` / ``.data.copy_(...)``), F.affine_grid + F.grid_sample, then a small CNN;
SGD, nll_loss. Replaced: torchvision MNIST -> the MNIST sample; matplotlib dropped."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from runtime.data.datasets import MNIST

device = torch.device("cpu")
transform = lambda img: torch.from_numpy((img - 0.1307) / 0.3081)
train_loader = torch.utils.data.DataLoader(
    torch.utils.data.Subset(MNIST(train=True, transform=transform),
                            np.random.default_rng(0).permutation(4000)[:256]),
    batch_size=64, shuffle=True, num_workers=0)
test_loader = torch.utils.data.DataLoader(
    torch.utils.data.Subset(MNIST(train=False, transform=transform), range(0, 1000, 5)),
    batch_size=64, shuffle=True, num_workers=0)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)
        self.localization = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True)
        )
        self.fc_loc = nn.Sequential(
            nn.Linear(10 * 3 * 3, 32),
            nn.ReLU(True),
            nn.Linear(32, 3 * 2)
        )
        self.fc_loc[2].weight.data.zero_()
        self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))

    def stn(self, x):
        xs = self.localization(x)
        xs = xs.view(-1, 10 * 3 * 3)
        theta = self.fc_loc(xs)
        theta = theta.view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size())
        x = F.grid_sample(x, grid)
        return x

    def forward(self, x):
        x = self.stn(x)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


torch.manual_seed(0)
model = Net().to(device)
optimizer = optim.SGD(model.parameters(), lr=0.01)


def train(epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % 2 == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))


def test():
    with torch.no_grad():
        model.eval()
        test_loss = 0
        correct = 0
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, size_average=False).item()
            pred = output.max(1, keepdim=True)[1]
            correct += pred.eq(target.view_as(pred)).sum().item()
        test_loss /= len(test_loader.dataset)
        print('\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n'
              .format(test_loss, correct, len(test_loader.dataset),
                      100. * correct / len(test_loader.dataset)))
        return test_loss


first = test()
theta_before = model.fc_loc[2].bias.detach().clone()
for epoch in range(1, 3):
    train(epoch)
    last = test()
with torch.no_grad():
    data = next(iter(test_loader))[0].to(device)
    transformed = model.stn(data).cpu()
assert transformed.shape == data.shape
assert not torch.equal(model.fc_loc[2].bias.detach(), theta_before)   # the STN learned too
assert last < first, (first, last)
print(f"TRAINED {first:.4f} -> {last:.4f}")
