"""``tensor.optim`` (torch.optim): SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, LBFGS and
lr_scheduler."""
from . import lr_scheduler  # noqa: F401
from .adagrad import Adadelta, Adagrad
from .adam import Adam, AdamW
from .lbfgs import LBFGS
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "LBFGS",
           "lr_scheduler"]
