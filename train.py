"""Train a ViT: ``python train.py [overrides]``; ``python train.py -m key=a,b`` sweeps. See conf/train.yaml."""

from vitlit.train import command_line, main  # noqa: F401  (main: tests call main.__wrapped__(cfg))

if __name__ == "__main__":
    command_line()
