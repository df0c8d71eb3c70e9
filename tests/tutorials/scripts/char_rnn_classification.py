"""intermediate_source/char_rnn_classification_tutorial.py, renamed imports only: one-hot
line tensors (N_LETTERS), nn.RNN + Linear + LogSoftmax, NLLLoss, clip_grad_norm_, SGD,
torch.utils.data.Dataset of (label_tensor, text_tensor, label, text).

Replaced: the data/names/*.txt download -> made-up surnames of three "languages" built from
distinct syllable sets (a tiny seeded generator), so the classes are learnable.
"""
import random
import string
import time

import torch
import torch.nn as nn
from torch.utils.data import Dataset

allowed_characters = string.ascii_letters + " .,;'" + "_"
n_letters = len(allowed_characters)


def letterToIndex(letter):
    if letter not in allowed_characters:
        return allowed_characters.find("_")
    else:
        return allowed_characters.find(letter)


def lineToTensor(line):
    tensor = torch.zeros(len(line), 1, n_letters)
    for li, letter in enumerate(line):
        tensor[li][0][letterToIndex(letter)] = 1
    return tensor


SYLLABLES = {"Italian": ["ri", "no", "ca", "li", "ssi", "tto"],
             "Scottish": ["mac", "gor", "don", "ach", "ster"],
             "Japanese": ["ka", "shi", "mo", "to", "ya", "ru"]}


class NamesDataset(Dataset):
    def __init__(self, n_per_class, seed):
        rng = random.Random(seed)
        self.data, self.data_tensors, self.labels, self.labels_tensors = [], [], [], []
        self.labels_uniq = sorted(SYLLABLES)
        for label in self.labels_uniq:
            for _ in range(n_per_class):
                name = "".join(rng.choice(SYLLABLES[label]) for _ in range(rng.randint(2, 3)))
                name = name.capitalize()
                self.data.append(name)
                self.data_tensors.append(lineToTensor(name))
                self.labels.append(label)
        for idx in range(len(self.labels)):
            temp_tensor = torch.tensor([self.labels_uniq.index(self.labels[idx])],
                                       dtype=torch.long)
            self.labels_tensors.append(temp_tensor)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        return self.labels_tensors[idx], self.data_tensors[idx], self.labels[idx], self.data[idx]


class CharRNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(CharRNN, self).__init__()
        self.rnn = nn.RNN(input_size, hidden_size)
        self.h2o = nn.Linear(hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, line_tensor):
        rnn_out, hidden = self.rnn(line_tensor)
        output = self.h2o(hidden[0])
        output = self.softmax(output)
        return output


def label_from_output(output, output_labels):
    top_n, top_i = output.topk(1)
    label_i = top_i[0].item()
    return output_labels[label_i], label_i


def train(rnn, training_data, n_epoch=10, n_batch_size=64, report_every=50,
          learning_rate=0.2, criterion=nn.NLLLoss()):
    current_loss = 0
    all_losses = []
    rnn.train()
    optimizer = torch.optim.SGD(rnn.parameters(), lr=learning_rate)
    start = time.time()
    print(f"training on data set with n = {len(training_data)}")
    for iter in range(1, n_epoch + 1):
        rnn.zero_grad()
        batches = list(range(len(training_data)))
        random.shuffle(batches)
        batches = [batches[i:i + n_batch_size] for i in range(0, len(batches), n_batch_size)]
        for idx, batch in enumerate(batches):
            batch_loss = 0
            for i in batch:
                (label_tensor, text_tensor, label, text) = training_data[i]
                output = rnn.forward(text_tensor)
                loss = criterion(output, label_tensor)
                batch_loss += loss
            batch_loss.backward()
            nn.utils.clip_grad_norm_(rnn.parameters(), 3)
            optimizer.step()
            optimizer.zero_grad()
            current_loss += batch_loss.item() / len(batch)
        all_losses.append(current_loss / len(batches))
        if iter % report_every == 0:
            print(f"{iter} ({iter / n_epoch:.0%}): \t average batch loss = {all_losses[-1]}")
        current_loss = 0
    return all_losses


torch.manual_seed(2024)
random.seed(2024)
alldata = NamesDataset(40, seed=0)
train_set, test_set = torch.utils.data.random_split(alldata, [.85, .15],
                                                    generator=torch.Generator().manual_seed(2024))
print(f"train examples = {len(train_set)}, validation examples = {len(test_set)}")
n_hidden = 64
rnn = CharRNN(n_letters, n_hidden, len(alldata.labels_uniq))
print(rnn)
all_losses = train(rnn, train_set, n_epoch=8, learning_rate=0.15, report_every=2)

rnn.eval()
correct = 0
with torch.no_grad():
    for i in range(len(test_set)):
        (label_tensor, text_tensor, label, text) = test_set[i]
        output = rnn(text_tensor)
        guess, guess_i = label_from_output(output, alldata.labels_uniq)
        correct += guess == label
print(f"accuracy {correct / len(test_set):.2f}")
assert all_losses[-1] < all_losses[0] and correct / len(test_set) > 0.5, (all_losses, correct)
print(f"TRAINED {all_losses[0]:.4f} -> {all_losses[-1]:.4f}")
