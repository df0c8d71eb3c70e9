"""intermediate_source/char_rnn_generation_tutorial.py, renamed imports only: the hand-built
RNN (i2h, i2o, o2o on torch.cat((category, input, hidden), 1), dropout, LogSoftmax), one-hot
tensors, target_line_tensor.unsqueeze_(-1), ``loss = torch.Tensor([0]); loss += l`` over the
time steps, and the manual ``p.data.add_(p.grad.data, alpha=-learning_rate)`` update.

Replaced: data/names/*.txt -> made-up names of three "languages" from distinct syllables.
"""
import random
import string

import torch
import torch.nn as nn

all_letters = string.ascii_letters + " .,;'-"
n_letters = len(all_letters) + 1  # Plus EOS marker
SYLLABLES = {"Italian": ["ri", "no", "ca", "li", "ssi", "tto"],
             "Scottish": ["mac", "gor", "don", "ach", "ster"],
             "Japanese": ["ka", "shi", "mo", "to", "ya", "ru"]}
rng = random.Random(0)
category_lines = {c: ["".join(rng.choice(s) for _ in range(rng.randint(2, 3))).capitalize()
                      for _ in range(50)] for c, s in SYLLABLES.items()}
all_categories = sorted(category_lines)
n_categories = len(all_categories)


class RNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(RNN, self).__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(n_categories + input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(n_categories + input_size + hidden_size, output_size)
        self.o2o = nn.Linear(hidden_size + output_size, output_size)
        self.dropout = nn.Dropout(0.1)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, category, input, hidden):
        input_combined = torch.cat((category, input, hidden), 1)
        hidden = self.i2h(input_combined)
        output = self.i2o(input_combined)
        output_combined = torch.cat((hidden, output), 1)
        output = self.o2o(output_combined)
        output = self.dropout(output)
        output = self.softmax(output)
        return output, hidden

    def initHidden(self):
        return torch.zeros(1, self.hidden_size)


def randomChoice(l):
    return l[random.randint(0, len(l) - 1)]


def randomTrainingPair():
    category = randomChoice(all_categories)
    line = randomChoice(category_lines[category])
    return category, line


def categoryTensor(category):
    li = all_categories.index(category)
    tensor = torch.zeros(1, n_categories)
    tensor[0][li] = 1
    return tensor


def inputTensor(line):
    tensor = torch.zeros(len(line), 1, n_letters)
    for li in range(len(line)):
        letter = line[li]
        tensor[li][0][all_letters.find(letter)] = 1
    return tensor


def targetTensor(line):
    letter_indexes = [all_letters.find(line[li]) for li in range(1, len(line))]
    letter_indexes.append(n_letters - 1)  # EOS
    return torch.LongTensor(letter_indexes)


def randomTrainingExample():
    category, line = randomTrainingPair()
    category_tensor = categoryTensor(category)
    input_line_tensor = inputTensor(line)
    target_line_tensor = targetTensor(line)
    return category_tensor, input_line_tensor, target_line_tensor


criterion = nn.NLLLoss()
learning_rate = 0.0005


def train(category_tensor, input_line_tensor, target_line_tensor):
    target_line_tensor.unsqueeze_(-1)
    hidden = rnn.initHidden()
    rnn.zero_grad()
    loss = torch.Tensor([0])  # you can also just simply use ``loss = 0``
    for i in range(input_line_tensor.size(0)):
        output, hidden = rnn(category_tensor, input_line_tensor[i], hidden)
        l = criterion(output, target_line_tensor[i])
        loss += l
    loss.backward()
    for p in rnn.parameters():
        p.data.add_(p.grad.data, alpha=-learning_rate)
    return output, loss.item() / input_line_tensor.size(0)


def sample(category, start_letter='A', max_length=20):
    with torch.no_grad():
        category_tensor = categoryTensor(category)
        input = inputTensor(start_letter)
        hidden = rnn.initHidden()
        output_name = start_letter
        for i in range(max_length):
            output, hidden = rnn(category_tensor, input[0], hidden)
            topv, topi = output.topk(1)
            topi = topi[0][0]
            if topi == n_letters - 1:
                break
            else:
                letter = all_letters[topi]
                output_name += letter
            input = inputTensor(letter)
        return output_name


random.seed(0)
torch.manual_seed(0)
rnn = RNN(n_letters, 128, n_letters)
n_iters = 400
plot_every = 100
all_losses = []
total_loss = 0
for iter in range(1, n_iters + 1):
    output, loss = train(*randomTrainingExample())
    total_loss += loss
    if iter % plot_every == 0:
        all_losses.append(total_loss / plot_every)
        print(f"{iter} {loss:.4f}")
        total_loss = 0
rnn.eval()
print(sample('Japanese', 'K'), sample('Scottish', 'M'))
assert all_losses[-1] < all_losses[0], all_losses
print(f"TRAINED {all_losses[0]:.4f} -> {all_losses[-1]:.4f}")
