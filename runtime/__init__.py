"""zgrad's runtime: process groups and collectives (``runtime.distributed``), the data
loader (``runtime.data``), and later checkpoints and the training loop."""
