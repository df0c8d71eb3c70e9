"""recipes_source/recipes/saving_and_loading_a_general_checkpoint.py (and
beginner_source/saving_loading_models.py), renamed imports only: a dict checkpoint of epoch,
model and optimizer state_dicts and loss, torch.load(weights_only=True), resume training;
the whole-model state_dict into a fresh model with strict=False partial loading."""
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


torch.manual_seed(0)
net = Net()
print(net)
optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
print("Model's state_dict:")
for param_tensor in net.state_dict():
    print(param_tensor, "\t", net.state_dict()[param_tensor].size())
print("Optimizer's state_dict:")
for var_name in optimizer.state_dict():
    print(var_name, "\t", optimizer.state_dict()[var_name])

x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
criterion = nn.CrossEntropyLoss()


def step():
    optimizer.zero_grad()
    loss = criterion(net(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


first = step()
for _ in range(4):
    LOSS = step()
EPOCH = 5
PATH = os.path.join(tempfile.mkdtemp(), "model.pt")
torch.save({
            'epoch': EPOCH,
            'model_state_dict': net.state_dict(),
            'optimizer_state_dict': optimizer.state_dict(),
            'loss': LOSS,
            }, PATH)
reference = [step() for _ in range(3)]     # what continuing without a restart gives

model = Net()
optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
checkpoint = torch.load(PATH, weights_only=True)
model.load_state_dict(checkpoint['model_state_dict'])
optimizer.load_state_dict(checkpoint['optimizer_state_dict'])
epoch = checkpoint['epoch']
loss = checkpoint['loss']
model.train()
net = model
resumed = [step() for _ in range(3)]
print("reference", reference, "resumed", resumed)
assert all(abs(a - b) < 1e-4 * max(1.0, abs(a)) for a, b in zip(reference, resumed))

PATH2 = os.path.join(tempfile.mkdtemp(), "modelA.pt")
torch.save(net.state_dict(), PATH2)


class NetB(Net):
    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(10, 2)


modelB = NetB()
result = modelB.load_state_dict(torch.load(PATH2, weights_only=True), strict=False)
print(result)
assert list(result.missing_keys) == ["extra.weight", "extra.bias"]
assert resumed[-1] < first, (first, resumed)
print(f"TRAINED {first:.4f} -> {resumed[-1]:.4f}")
