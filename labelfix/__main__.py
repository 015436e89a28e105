"""``python -m labelfix``: the same as the ``labelfix`` command (handy under torchrun:
``torchrun --nproc_per_node=2 -m labelfix train ...``)."""

from labelfix.cli import main

if __name__ == "__main__":
    main(prog_name="labelfix")
